"""The AANet estimator: archetypes of known simplices, the scikit-learn contract, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from featgeo.archetypes.aanet import AANet, NotFittedError, span_basis
from featgeo.archetypes.config import AANetConfig
from featgeo.archetypes.synthetic import simplex_points

# Measured (d=64, rank 8, n=1500, noise 0.01, unit mean edge, seeds 3, 4, 5): the farthest
# matched archetype lies 0.087 (k*=3), 0.133 (k*=4) and 0.226 (k*=5) from its true vertex, and
# the mean |lambda - true weight| is 0.028 / 0.055 / 0.049. Allowed: 0.35 of an edge and 0.1.
VERTEX_TOL = 0.35


def _matched_distances(archetypes: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    dist = np.linalg.norm(archetypes[:, None, :] - vertices[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(dist)
    return dist[rows, cols]


@pytest.fixture(scope="module")
def fitted():
    out = {}
    for k_star in (3, 4, 5):
        data = simplex_points(1500, k_star, d=64, rank=8, alpha=1.0, noise=0.01, seed=k_star)
        net = AANet(k=k_star, config=AANetConfig(max_steps=1500)).fit(data.X)
        out[k_star] = (data, net)
    return out


@pytest.mark.parametrize("k_star", [3, 4, 5])
def test_archetypes_lie_near_the_true_vertices(fitted, k_star):
    data, net = fitted[k_star]
    assert net.archetypes_.shape == (k_star, 64)
    assert _matched_distances(net.archetypes_, data.vertices).max() < VERTEX_TOL


@pytest.mark.parametrize("k_star", [3, 4, 5])
def test_barycentric_coordinates_match_the_true_weights(fitted, k_star):
    data, net = fitted[k_star]
    lam = net.transform(data.X)
    np.testing.assert_allclose(lam.sum(axis=1), 1.0, atol=1e-5)
    # Almost every point is inside the learned simplex (lambda >= -0.05) ...
    assert (lam.min(axis=1) >= -0.05).mean() > 0.9
    # ... and its coordinates track the true Dirichlet weights up to a vertex permutation.
    dist = np.linalg.norm(net.archetypes_[:, None] - data.vertices[None], axis=-1)
    _, order = linear_sum_assignment(dist)
    err = np.abs(lam - data.weights[:, order]).mean()
    assert err < 0.1


def test_reconstruction_is_close(fitted):
    data, net = fitted[4]
    rel = np.linalg.norm(net.reconstruct(data.X) - data.X) / np.linalg.norm(data.X - data.X.mean(0))
    assert rel < 0.15


def test_save_load_round_trip_with_weights_only(fitted, tmp_path):
    data, net = fitted[3]
    path = net.save(tmp_path / "aanet_cluster_0_k3.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["k"] == 3 and raw["format"] == "featgeo.aanet"
    back = AANet.load(path)
    np.testing.assert_array_equal(back.transform(data.X[:50]), net.transform(data.X[:50]))
    np.testing.assert_array_equal(back.archetypes_, net.archetypes_)
    np.testing.assert_array_equal(back.loss_curve_, net.loss_curve_)
    assert back.final_losses_ == net.final_losses_


def test_same_seed_is_byte_identical():
    data = simplex_points(300, 3, d=32, rank=4, seed=0)
    cfg = AANetConfig(max_steps=80)
    a = AANet(k=3, config=cfg).fit(data.X)
    b = AANet(k=3, config=cfg).fit(data.X)
    assert a.loss_curve_.tobytes() == b.loss_curve_.tobytes()
    assert a.archetypes_.tobytes() == b.archetypes_.tobytes()


def test_full_space_and_subspace_agree_on_the_span():
    data = simplex_points(300, 3, d=32, rank=4, seed=1)
    assert span_basis(data.X).shape == (32, 4)
    cfg = AANetConfig(max_steps=300)
    sub = AANet(k=3, config=cfg).fit(data.X)
    full = AANet(k=3, config=cfg, space="full").fit(data.X)
    assert sub.basis_ is not None and full.basis_ is None
    # Same model family: final losses of the same order (different initial layers).
    assert sub.final_losses_["recon"] == pytest.approx(full.final_losses_["recon"], rel=1.0)


def test_unfitted_use_is_a_clear_error():
    with pytest.raises(NotFittedError, match="not fitted"):
        AANet(k=3).transform(np.zeros((4, 2)))


@pytest.mark.parametrize(
    ("kwargs", "X", "match"),
    [
        ({"k": 1}, np.zeros((20, 3)), "k must be an int >= 2"),
        ({"k": 3}, np.zeros((5, 3)), "needs at least 11"),
        ({"k": 3}, np.full((20, 3), np.nan), "NaN or infinite"),
        ({"k": 3}, np.zeros(20), "2-D array"),
        ({"k": 3, "space": "diag"}, np.zeros((20, 3)), "space must be"),
    ],
    ids=["k<2", "too-few-points", "non-finite", "1-d", "bad-space"],
)
def test_bad_input_is_refused(kwargs, X, match):
    with pytest.raises(ValueError, match=match):
        AANet(**kwargs).fit(X)


def test_transform_refuses_other_widths(fitted):
    _, net = fitted[3]
    with pytest.raises(ValueError, match="fitted on 64"):
        net.transform(np.zeros((3, 10)))


def test_load_refuses_other_files(tmp_path):
    other = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a featgeo AANet file"):
        AANet.load(other)
    with pytest.raises(FileNotFoundError):
        AANet.load(tmp_path / "missing.pt")


def test_numpy_int_k_and_seed_work():
    data = simplex_points(200, 3, d=12, rank=4, seed=0)
    net = AANet(k=np.int64(3), config=AANetConfig(max_steps=20, seed=np.int64(2))).fit(data.X)
    assert net.k == 3 and net.archetypes_.shape == (3, 12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": float("inf")}, "lr must be a positive finite number"),
        ({"seed": -1}, r"seed must be an int in 0..2\*\*32-1"),
        ({"extra": {"a": np.zeros(2)}}, "extra must hold only JSON values"),
        ({"hidden": 64}, "hidden must be a tuple of ints"),
        ({"min_lr": 0.1, "lr": 0.01}, "must be below lr"),
        ({"lr_factor": 1.0}, r"lr_factor must lie in \(0, 1\)"),
    ],
    ids=["inf-lr", "negative-seed", "extra-not-json", "hidden-int", "min_lr>lr", "factor-1"],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AANetConfig(**kwargs)


def test_config_from_dict_checks_its_input():
    with pytest.raises(TypeError, match="needs a dict"):
        AANetConfig.from_dict(None)
    with pytest.raises(ValueError, match="unknown AANetConfig fields"):
        AANetConfig.from_dict({"learning_rate": 1.0})
    cfg = AANetConfig(lr=0.01, hidden=(16, 8))
    assert AANetConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_device_and_divergence_are_one_line_errors():
    data = simplex_points(200, 3, d=12, rank=4, seed=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available; use 'cpu'"):
            AANet(k=3, config=AANetConfig(max_steps=5), device="cuda").fit(data.X)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda"):
        AANet(k=3, config=AANetConfig(max_steps=5), device="gpu").fit(data.X)
    with pytest.raises(ValueError, match="training diverged"):
        AANet(k=3, config=AANetConfig(max_steps=30)).fit(data.X * 1e30)


def test_load_of_garbage_names_the_fix(tmp_path):
    garbage = tmp_path / "g.pt"
    garbage.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="is not an AANet file written by featgeo") as info:
        AANet.load(garbage)
    assert "\n" not in str(info.value)
    partial = tmp_path / "p.pt"
    torch.save({"format": "featgeo.aanet", "format_version": 1}, partial)
    with pytest.raises(ValueError, match="missing"):
        AANet.load(partial)


def test_config_from_options_names_the_option_of_a_bad_value():
    from featgeo.archetypes.config import AANetConfig, config_from_options

    base = AANetConfig(max_steps=40, lr=0.01)
    assert config_from_options({"max_steps": 7}, base) == AANetConfig(max_steps=7, lr=0.01)
    assert config_from_options({}) == AANetConfig()
    for values, message in (({"max_steps": 0}, "--max-steps must be a positive int"),
                            ({"lr": -1.0}, "--lr must be a positive finite number"),
                            ({"smoothing_window": 0}, "--loss-smoothing-window must"),
                            ({"hidden": (3,)}, "cannot be set here")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            config_from_options(values, base)
