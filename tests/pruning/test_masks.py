import pytest
import torch

from featgeo.pruning.masks import matrix_mask, nm_mask, parse_nm, row_mask


def quantized_scores(rows: int, cols: int, levels: int = 4) -> torch.Tensor:
    """Scores with many exact ties, like dequantized Q4_1 weights."""
    return torch.randint(0, levels, (rows, cols)).float()


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7, 0.99])
def test_row_mask_prunes_exact_count_per_row_despite_ties(sparsity):
    scores = quantized_scores(37, 96)
    mask = row_mask(scores, sparsity)
    assert (mask.sum(dim=1) == int(96 * sparsity)).all()


def test_row_mask_breaks_ties_by_lower_index_first():
    scores = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
    # Three zeros are the smallest; with sparsity 4/6 one of the ties at 1.0 goes too: the first.
    mask = row_mask(scores, 4 / 6)
    assert mask.tolist() == [[True, True, False, True, False, True]]


def test_row_mask_removes_the_smallest_scores():
    scores = torch.tensor([[5.0, 1.0, 4.0, 2.0], [0.5, 0.1, 0.2, 9.0]])
    assert row_mask(scores, 0.5).tolist() == [
        [False, True, False, True],
        [False, True, True, False],
    ]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)], ids=lambda v: str(v))
def test_nm_mask_has_exactly_n_pruned_in_every_group(n, m):
    scores = quantized_scores(19, 64)
    mask = nm_mask(scores, n, m)
    groups = mask.reshape(19, 64 // m, m).sum(dim=-1)
    assert (groups == n).all()


def test_nm_mask_picks_smallest_in_each_group():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 8.0, 0.5]])
    assert nm_mask(scores, 2, 4).tolist() == [[False, True, False, True, True, False, False, True]]


def test_matrix_mask_exact_total_and_uneven_rows():
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    mask = matrix_mask(scores, 0.5)
    assert mask.sum() == 4
    assert mask[0].all() and not mask[1].any()


def test_nm_mask_rejects_indivisible_width():
    with pytest.raises(ValueError, match="divisible by M"):
        nm_mask(torch.ones(2, 6), 2, 4)


@pytest.mark.parametrize("text,expected", [("2:4", (2, 4)), ("4:8", (4, 8)), (None, None)])
def test_parse_nm(text, expected):
    assert parse_nm(text) == expected


@pytest.mark.parametrize(
    "text,match",
    [
        ("2-4", "must look like"),
        ("a:b", "must look like"),
        ("2:4:8", "must look like"),
        ("4:2", "0 < N < M"),
        ("0:4", "0 < N < M"),
        ("4:4", "0 < N < M"),
    ],
)
def test_parse_nm_rejects_malformed(text, match):
    with pytest.raises(ValueError, match=match):
        parse_nm(text)


@pytest.mark.parametrize("shape", [(1, 1000), (33, 96), (7, 16, 4)], ids=str)
@pytest.mark.parametrize("levels", [3, 16, 100000], ids=["few-ties", "q4-ties", "no-ties"])
def test_linear_time_selection_equals_stable_sort(shape, levels):
    from featgeo.pruning.masks import _smallest, _smallest_by_sort

    scores = torch.randint(0, levels, shape).float()
    for k in (0, 1, shape[-1] // 3, shape[-1] // 2, shape[-1] - 1, shape[-1]):
        assert torch.equal(_smallest(scores, k), _smallest_by_sort(scores, k)), k
