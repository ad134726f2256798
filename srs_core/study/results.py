"""What a study's variants scored: the selection (validation only) and mean ± std over seeds.

``results`` maps each variant's name to its metrics per split, as ``srs evaluate`` names them::

    {"full/seed0": {"val": {"MAP": 0.61, "R10@1": 0.45, ...}, "test": {...}}, ...}

Selection reads ``val`` only: test metrics are reported for every variant and never choose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from srs_core.errors import DataError

SELECTION_SPLIT = "val"
SELECTION_METRIC = "MAP"
Results = Mapping[str, Mapping[str, Mapping[str, float]]]


def base_name(name: str) -> str:
    """``full/seed1`` -> ``full`` (the variant the seeds repeat)."""
    return name.split("/", 1)[0]


def _ordered(results: Results, order: Sequence[str] | None) -> list[str]:
    names = list(results) if order is None else [n for n in order if n in results]
    missing = [n for n in results if n not in names]
    if missing:
        raise DataError(f"results of {missing[0]!r} are not in the study's order")
    if not names:
        raise DataError("no variant has results")
    return names


def select_best(results: Results, metric: str = SELECTION_METRIC,
                order: Sequence[str] | None = None) -> str:
    """The variant with the highest validation ``metric`` (ties: the first in ``order``)."""
    best, best_value = None, -math.inf
    for name in _ordered(results, order):
        val = results[name].get(SELECTION_SPLIT)
        if not isinstance(val, Mapping) or metric not in val:
            raise DataError(f"variant {name!r} has no validation {metric}: selection uses "
                            "validation metrics only")
        value = float(val[metric])
        if not math.isnan(value) and (best is None or value > best_value):
            best, best_value = name, value
    if best is None:
        raise DataError(f"every variant's validation {metric} is NaN: nothing to select")
    return best


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    if not len(values):
        raise DataError("mean_std: no values")
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return float(array.mean()), std


def aggregate(results: Results, order: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per base variant (study order): ``runs``, ``n`` and ``{split: {metric: {mean, std}}}``.

    Every run of a base variant must report the same splits and metrics.
    """
    groups: dict[str, list[str]] = {}
    for name in _ordered(results, order):
        groups.setdefault(base_name(name), []).append(name)
    out: dict[str, dict[str, Any]] = {}
    for base, runs in groups.items():
        first = results[runs[0]]
        entry: dict[str, Any] = {"runs": runs, "n": len(runs)}
        for split, metrics in first.items():
            entry[split] = {}
            for metric in metrics:
                try:
                    values = [float(results[run][split][metric]) for run in runs]
                except KeyError:
                    raise DataError(f"variant {base!r}: not every seed reports {split} "
                                    f"{metric}") from None
                mean, std = mean_std(values)
                entry[split][metric] = {"mean": mean, "std": std}
        out[base] = entry
    return out


def format_mean_std(mean: float, std: float, n: int, digits: int = 4) -> str:
    """``0.6123 ± 0.0101`` for several seeds, ``0.6123`` for one."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"
