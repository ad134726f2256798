"""rank_metrics against hand-computed cases and an independent brute-force implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from srs_core.errors import DataError
from srs_core.metrics import METRIC_NAMES, positive_ranks, rank_metrics

KEYS = ("R10@1", "R10@2", "R10@5", "R2@1", "MAP", "MRR", "P@1")


def _brute_force(scores: np.ndarray, positive: int) -> dict[str, float]:
    """DESIGN.md section 4 read literally: sort, ties placed before the positive."""
    out = {key: 0.0 for key in KEYS}
    for row in scores:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j == positive))
        rank = order.index(positive) + 1
        first_negative = next(j for j in range(len(row)) if j != positive)
        out["R10@1"] += rank <= 1
        out["R10@2"] += rank <= 2
        out["R10@5"] += rank <= 5
        out["R2@1"] += row[positive] > row[first_negative]
        out["MAP"] += 1 / rank
        out["MRR"] += 1 / rank
        out["P@1"] += rank == 1
    return {key: value / len(scores) for key, value in out.items()}


def test_hand_computed_rows() -> None:
    scores = np.array([
        [9, 1, 2, 3, 4, 5, 6, 7, 8, 0],  # positive first: rank 1
        [5, 9, 1, 1, 1, 1, 1, 1, 1, 1],  # one higher: rank 2
        [5, 9, 8, 7, 6, 1, 1, 1, 1, 1],  # four higher: rank 5
        [0, 9, 8, 7, 6, 5, 4, 3, 2, 1],  # last: rank 10
    ], dtype=float)
    got = rank_metrics(scores)
    assert tuple(got) == METRIC_NAMES == KEYS  # the one list names what rank_metrics returns
    assert positive_ranks(scores).tolist() == [1, 2, 5, 10]
    assert got["R10@1"] == got["P@1"] == pytest.approx(1 / 4)
    assert got["R10@2"] == pytest.approx(2 / 4)
    assert got["R10@5"] == pytest.approx(3 / 4)
    assert got["R2@1"] == pytest.approx(1 / 4)  # only row 0 beats candidate 1
    assert got["MAP"] == got["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 4)
    assert set(got) == set(KEYS) and all(isinstance(v, float) for v in got.values())


def test_ties_never_favour_the_positive() -> None:
    constant = np.zeros((3, 10))
    got = rank_metrics(constant)
    assert positive_ranks(constant).tolist() == [10, 10, 10]
    assert got["R10@1"] == got["R10@5"] == got["R2@1"] == 0.0
    assert got["MAP"] == pytest.approx(0.1)
    # Tied with one negative, above the rest: rank 2, and R2@1 needs a strict win.
    tied = np.array([[3.0, 3.0, 1, 1, 1, 1, 1, 1, 1, 1]])
    assert positive_ranks(tied).tolist() == [2]
    assert rank_metrics(tied)["R2@1"] == 0.0


def test_nan_scores_rank_last() -> None:
    scores = np.array([[math.nan, 1.0, 2.0], [2.0, math.nan, 1.0]])
    assert positive_ranks(scores).tolist() == [3, 1]


@pytest.mark.parametrize("positive", [0, 3])
def test_matches_brute_force_on_random_scores_with_ties(positive: int) -> None:
    rng = np.random.default_rng(positive)
    for trial in range(20):
        # Few distinct integer values, so ties are frequent.
        scores = rng.integers(0, 4 + trial % 5, size=(50, 10)).astype(float)
        got, expected = rank_metrics(scores, positive), _brute_force(scores, positive)
        assert got == pytest.approx(expected, abs=1e-12)


def test_other_candidate_counts() -> None:
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = rank_metrics(scores)
    assert got == pytest.approx(_brute_force(scores, 0))
    assert got["R10@5"] == 1.0  # every rank is within 5 when there are 2 candidates


@pytest.mark.parametrize("bad", [np.zeros((0, 10)), np.zeros(10), np.zeros((4, 1))])
def test_bad_shapes_are_rejected(bad: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"\[N, C\]"):
        rank_metrics(bad)


def test_bad_positive_is_rejected() -> None:
    with pytest.raises(DataError, match="positive index 10"):
        rank_metrics(np.zeros((2, 10)), positive=10)
