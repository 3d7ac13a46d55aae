"""Tests written to kill the mutants that survived `make mutate MODULES=sae.cluster_metrics`
(docs/testing.md). Expected ranks come from spectra built by hand (unit rows repeated along
orthogonal axes: the squared singular values are the repeat counts) or from sklearn's PCA."""

import warnings

import numpy as np
import pytest
from sklearn.decomposition import PCA

from featgeo.latents.metrics import (
    activation_pca_rank,
    cluster_recon_error,
    decoder_dir_rank,
)


def axis_rows(counts: list[int], d: int = 6) -> np.ndarray:
    """counts[i] unit rows along axis i: singular values sqrt(counts), right vectors the axes."""
    rows = [np.eye(d)[i] for i, c in enumerate(counts) for _ in range(c)]
    return np.array(rows)


# --- decoder_dir_rank / cluster_recon_error ---------------------------------------------------


def test_energy_rank_stops_exactly_at_the_fraction():
    # sigma^2 = [1, 1]: the first direction holds exactly 50%, so fraction=0.5 needs one.
    assert decoder_dir_rank(axis_rows([1, 1]), fraction=0.5) == 1
    assert decoder_dir_rank(axis_rows([1, 1]), fraction=0.5 + 1e-6) == 2


def test_gap_on_the_last_pair_of_singular_values():
    # sigma^2 = [6, 5, 1] in 3 dimensions (exactly three singular values): sigma_1/sigma_2 =
    # 1.10, sigma_2/sigma_3 = 2.24, a gap only at the last pair; energy needs all three
    # (cum 0.5, 0.92, 1.0), so the rank is the gap's 2.
    assert decoder_dir_rank(axis_rows([6, 5, 1], d=3)) == 2


def test_energy_rule_uses_squared_singular_values():
    # sigma^2 = [10, 1, 1], no gap rule: 10/12 = 0.83 < 0.9 <= 11/12, so two directions.
    # (With sigma^3 the first would hold 31.6 / 33.6 = 0.94.)
    assert decoder_dir_rank(axis_rows([10, 1, 1]), fraction=0.9, gap=1e9) == 2


def test_recon_error_uses_the_given_rank():
    x = axis_rows([1, 1])  # rank 2 by default: error 0
    assert cluster_recon_error(x) == pytest.approx(0.0, abs=1e-20)
    assert cluster_recon_error(x, rank=1) == pytest.approx(0.5)  # one of two rows left out


@pytest.mark.parametrize("call", [decoder_dir_rank, cluster_recon_error,
                                  lambda x: cluster_recon_error(x, rank=1)],
                         ids=["decoder_dir_rank", "recon_error", "recon_error-rank1"])  # fmt: skip
def test_empty_cluster_is_refused_with_a_clear_message(call):
    with pytest.raises(ValueError, match=r"^directions must have at least one row, got shape"):
        call(np.zeros((0, 4)))


# --- activation_pca_rank ----------------------------------------------------------------------


def oracle_rank(acts: np.ndarray, active_l1: float = 1e-5) -> int:
    active = acts[np.abs(acts).sum(axis=1) > active_l1]
    ratio = np.cumsum(PCA().fit(active).explained_variance_ratio_)
    return int(np.argmax(ratio >= 0.95)) + 1


def test_bad_acts_name_the_argument():
    with pytest.raises(ValueError, match=r"^acts contains NaN or inf; check the SAE activations$"):
        activation_pca_rank(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(TypeError, match=r"^acts must be a numpy array or torch tensor"):
        activation_pca_rank([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"^acts must be 2-D"):
        activation_pca_rank(np.ones(3))


def test_single_latent_is_rank_one_even_when_silent():
    assert activation_pca_rank(np.zeros((10, 1))) == 1


def test_two_independent_latents_are_rank_two():
    acts = np.random.default_rng(0).uniform(0.1, 1.0, size=(200, 2))
    assert oracle_rank(acts) == 2
    assert activation_pca_rank(acts) == 2


def test_small_activations_keep_their_rank():
    # Total centred energy well below 1: still two directions.
    acts = 0.01 * np.random.default_rng(1).uniform(0.1, 1.0, size=(50, 2))
    assert oracle_rank(acts) == 2
    assert activation_pca_rank(acts) == 2


def test_two_active_tokens_span_one_direction():
    acts = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert activation_pca_rank(acts) == 1


def test_line_away_from_the_origin_is_rank_one():
    # c + t v with c far from 0 and unequal coordinates: rank 1 only if PCA centres per latent.
    t = np.linspace(-1.0, 1.0, 40)[:, None]
    acts = np.array([5.0, 1.0, 3.0]) + t * np.array([0.3, -0.2, 0.1])
    assert oracle_rank(acts) == 1
    assert activation_pca_rank(acts) == 1


def test_dominant_direction_is_rank_one():
    # Standard deviations 10 and 1: 100/101 of the variance in one direction (>= 95%), while
    # 10/11 of the summed singular values is not.
    rng = np.random.default_rng(2)
    z = rng.standard_normal((500, 2))
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    q, _ = np.linalg.qr(z)  # exactly uncorrelated, unit-norm columns
    acts = 5.0 + q * np.array([10.0, 1.0])
    assert oracle_rank(acts) == 1
    assert activation_pca_rank(acts) == 1


def test_tokens_at_exactly_the_active_threshold_are_left_out():
    # sum|a| must be *above* active_l1: the three tokens at exactly 1.0 would add a 2nd direction.
    acts = np.array([[3.0, -1.0], [3.0, 0.0], [3.0, 1.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])
    assert activation_pca_rank(acts, active_l1=1.0) == 1
    assert oracle_rank(acts, active_l1=0.99) == 2  # with them it is 2


@pytest.mark.parametrize(
    "centre,threshold",
    [
        ([0.5] * 8, 1e-12 * (8 * 0.25 * 2)),  # sum a^2 = 4: threshold 4e-12
        ([0.1, 0.1], 1e-12),  # sum a^2 = 0.04 < 1: the floor max(1, .) applies
        ([1000.0, 1000.0], 1e-12 * 4e6),  # large activations: relative threshold 4e-6
    ],
    ids=["sum-sq-4", "floor-1", "large"],
)
def test_zero_variance_threshold(centre, threshold):
    # Two tokens c +- delta e_0: centred energy 2 delta^2, sum a^2 = 2|c|^2 (+ 2 delta^2).
    # Rank 0 at half the threshold, rank 1 at 1.5 times it.
    centre = np.array(centre)
    e0 = np.eye(centre.size)[0]
    for factor, expected in ((0.5, 0), (1.5, 1)):
        delta = np.sqrt(factor * threshold / 2)
        acts = np.array([centre + delta * e0, centre - delta * e0])
        assert activation_pca_rank(acts) == expected, factor


def test_no_active_token_is_rank_zero_without_warnings():
    # The "fewer than two active tokens" guard: without it numpy would warn (mean of an empty
    # slice) on the way to the same 0.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert activation_pca_rank(np.zeros((30, 4))) == 0
        assert activation_pca_rank(np.array([[0.0, 0.0], [1.0, 2.0]])) == 0


def test_identical_tokens_have_rank_zero():
    assert activation_pca_rank(np.tile([[0.3, 0.7, 0.1]], (20, 1))) == 0
