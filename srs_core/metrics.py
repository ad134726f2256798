"""Ranking metrics of the sticker-selection protocol (DESIGN.md section 4).

Tie rule (``ties="against"``, ours): ties never favour the positive. Its rank is ``1 + the
number of other candidates scoring >= it``, so a positive tied with a negative ranks below it.
``ties="favour"`` is the authors' rule (their NumPy ``argsort`` over 10 items is stable and the
positive comes first): ``1 + the number scoring strictly higher``. NaN scores count as ``-inf``
(a NaN positive therefore ranks last). ``R2@1`` needs the positive *strictly* above the first
negative (the lowest-index candidate other than the positive) under both rules, as theirs.
"""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import ArrayLike

from srs_core.errors import DataError

TIE_RULES = ("against", "favour")
METRIC_NAMES = ("R10@1", "R10@2", "R10@5", "R2@1", "MAP", "MRR", "P@1")
# Metric lines on stdout (training prints them after each validation; Katib's StdOut collector
# reads them, srs_core.study.katib): ``srs-metric val_MAP=0.8123``. Two groups, name and value,
# as Katib's filter wants; valid in Go's RE2 and Python's re.
METRIC_PREFIX = "srs-metric"
METRIC_FORMAT = (r"srs-metric\s+([A-Za-z0-9_.@-]+)=([-+]?(?:\d+(?:\.\d*)?|\.\d+)"
                 r"(?:[eE][-+]?\d+)?)")
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_.@-]+$")


def metric_line(name: str, value: float) -> str:
    """The stdout line Katib collects: ``srs-metric val_MAP=0.8123`` (NaN/inf: never matched)."""
    if not _METRIC_NAME.match(name):
        raise ValueError(f"metric name {name!r}: use A-Z a-z 0-9 _ . @ -")
    return f"{METRIC_PREFIX} {name}={float(value)!r}"


def metric_lines(split: str, metrics: dict[str, float]) -> str:
    """Every metric as a :func:`metric_line` named ``<split>_<name>`` (``val_MAP``), one a
    line: what training prints after each validation for Katib's StdOut collector."""
    return "\n".join(metric_line(f"{split}_{name}", value) for name, value in metrics.items())


def positive_ranks(scores: ArrayLike, positive: int = 0, ties: str = "against") -> np.ndarray:
    """1-based rank ``[N]`` of each row's positive under the tie rule above."""
    if ties not in TIE_RULES:
        raise ValueError(f"tie rule {ties!r} is not one of {TIE_RULES}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] < 2:
        raise DataError(
            f"rank_metrics: scores must be a non-empty [N, C] array with C >= 2, got shape "
            f"{list(s.shape)}"
        )
    if not 0 <= positive < s.shape[1]:
        raise DataError(f"rank_metrics: positive index {positive} outside 0..{s.shape[1] - 1}")
    s = np.where(np.isnan(s), -np.inf, s)
    others = np.delete(s, positive, axis=1)
    target = s[:, positive : positive + 1]
    beaten_by = others >= target if ties == "against" else others > target
    return 1 + beaten_by.sum(axis=1)


def rank_metrics(scores: ArrayLike, positive: int = 0, ties: str = "against") -> dict[str, float]:
    """R10@1/2/5, R2@1, MAP, MRR and P@1 of ``scores [N, C]`` (higher = better).

    With one relevant candidate per dialog, MAP and MRR are both the mean of ``1 / rank`` and
    P@1 equals R10@1; all are kept for comparability with published tables. With C != 10
    candidates, ``R10@k`` is recall at k among the C.
    """
    rank = positive_ranks(scores, positive, ties)
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    first_negative = 1 if positive == 0 else 0
    reciprocal = float(np.mean(1.0 / rank))
    return {
        "R10@1": float(np.mean(rank <= 1)),
        "R10@2": float(np.mean(rank <= 2)),
        "R10@5": float(np.mean(rank <= 5)),
        "R2@1": float(np.mean(s[:, positive] > s[:, first_negative])),
        "MAP": reciprocal,
        "MRR": reciprocal,
        "P@1": float(np.mean(rank == 1)),
    }
