"""The comparison of a study's variants: numbers, deltas, mean ± std, Markdown and CSV.

Inputs per run (a variant, or one seed of it): the validation metrics that selected its
``best.pt`` (the training history's validation record with the highest MAP, the first on
ties, as training keeps it) and ``srs evaluate``'s metrics of the evaluated split under both
protocols. Columns are ``<split>_<metric>`` with the names ``srs evaluate`` writes:
``val_MAP`` (selection, strict protocol), ``test_R10@1`` (strict), ``test_paper_R10@1`` (the
authors' protocol). Selection reads ``val_MAP`` only (:func:`srs_core.study.select_best`).

:func:`comparison` gives, besides every run's numbers, per base variant (seeds grouped) the
mean, the sample std (ddof=1, 0 for one seed) and the delta of the mean against the reference
variant (``full``) when the study has one. All functions here are pure (no I/O).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from srs_core.errors import DataError
from srs_core.metrics import METRIC_NAMES
from srs_core.study.results import SELECTION_METRIC, SELECTION_SPLIT, aggregate, select_best

REFERENCE = "full"
SPLIT_LABELS = {"val": "validation (selection, strict protocol)"}


def selected_validation(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The validation metrics of the record training kept as ``best.pt`` (highest MAP)."""
    best: dict[str, float] | None = None
    for record in history:
        val = record.get(SELECTION_SPLIT)
        if not isinstance(val, Mapping) or SELECTION_METRIC not in val:
            continue
        value = float(val[SELECTION_METRIC])
        if not math.isnan(value) and (best is None or value > best[SELECTION_METRIC]):
            best = {k: float(val[k]) for k in METRIC_NAMES if k in val}
    if best is None:
        raise DataError("the training history has no validation record with a MAP: a study "
                        "selects on validation (is eval.protocol=paper?)")
    return best


def evaluation_key(split: str) -> str:
    """The results key of the evaluated split (``val_eval`` when it is the validation split)."""
    return f"{split}_eval" if split == SELECTION_SPLIT else split


def run_results(history: Sequence[Mapping[str, Any]],
                evaluation: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """One run's ``{"val": {...}, "<split>": {metric, paper_metric}}`` from its files."""
    split = str(evaluation.get("split", "test"))
    strict = evaluation.get("metrics", {})
    paper = evaluation.get("paper", {}).get("metrics", {})
    scored = {name: float(strict[name]) for name in METRIC_NAMES if name in strict}
    scored |= {f"paper_{name}": float(paper[name]) for name in METRIC_NAMES if name in paper}
    if not scored:
        raise DataError(f"the {split} evaluation has no metrics")
    return {SELECTION_SPLIT: selected_validation(history), evaluation_key(split): scored}


def flatten(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"val": {"MAP": x}}`` -> ``{"val_MAP": x}`` (split order, then metric order)."""
    return {f"{split}_{name}": float(value) for split, metrics in results.items()
            for name, value in metrics.items()}


def comparison(results: Mapping[str, Mapping[str, Mapping[str, float]]],
               order: Sequence[str] | None = None, reference: str = REFERENCE) -> dict[str, Any]:
    """Every run's numbers, the best run (validation MAP), and per base variant mean, std and
    the delta of its mean against ``reference`` (None when the study has no such variant)."""
    best = select_best(results, order=order)
    groups = aggregate(results, order=order)
    runs = {name: flatten(results[name]) for name in (order or results) if name in results}
    columns = list(next(iter(runs.values())))
    variants: dict[str, dict[str, Any]] = {}
    for base, entry in groups.items():
        stats = {f"{split}_{m}": value for split in results[entry["runs"][0]]
                 for m, value in entry[split].items()}
        variants[base] = {"runs": entry["runs"], "n": entry["n"],
                          "mean": {c: stats[c]["mean"] for c in columns if c in stats},
                          "std": {c: stats[c]["std"] for c in columns if c in stats}}
    ref = variants.get(reference)
    for entry in variants.values():
        entry["delta"] = None if ref is None else {
            c: entry["mean"][c] - ref["mean"][c] for c in columns
            if c in entry["mean"] and c in ref["mean"]}
    return {"selection": {"split": SELECTION_SPLIT, "metric": SELECTION_METRIC},
            "best": best, "best_metrics": runs[best], "reference": reference if ref else None,
            "columns": columns, "runs": runs, "variants": variants}


def column_label(column: str) -> str:
    """``test_paper_MAP`` -> ``test MAP (paper)``; ``val_MAP`` -> ``val MAP``."""
    split, _, metric = column.partition("_")
    if split == SELECTION_SPLIT and metric.startswith("eval_"):
        split, metric = "val_eval", metric[5:]
    if metric.startswith("paper_"):
        return f"{split} {metric[6:]} (paper)"
    return f"{split} {metric}"


def cell(compared: Mapping[str, Any], base: str, column: str, digits: int = 4) -> str:
    """A table cell: the value (mean ± std over seeds) and its delta against the reference."""
    entry = compared["variants"][base]
    if column not in entry["mean"]:
        return ""
    text = f"{entry['mean'][column]:.{digits}f}"
    if entry["n"] > 1:
        text += f" ± {entry['std'][column]:.{digits}f}"
    delta = (entry.get("delta") or {}).get(column)
    if delta is not None and base != compared["reference"]:
        text += f" ({delta:+.{digits}f})"
    return text


def table(compared: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The comparison table: one row per metric column, one column per base variant."""
    return {column_label(c): {base: cell(compared, base, c) for base in compared["variants"]}
            for c in compared["columns"]}


def markdown(compared: Mapping[str, Any], title: str = "Study comparison") -> str:
    """The comparison as Markdown: the selection, the table, and how to read it."""
    bases = list(compared["variants"])
    seeds = max(entry["n"] for entry in compared["variants"].values())
    lines = [f"# {title}", "",
             f"Best on validation MAP: **{compared['best']}** (validation MAP "
             f"{compared['best_metrics']['val_MAP']:.4f}); test metrics never select.", "",
             "| metric | " + " | ".join(bases) + " |",
             "|---|" + "---|" * len(bases)]
    for label, cells in table(compared).items():
        lines.append(f"| {label} | " + " | ".join(cells[b] for b in bases) + " |")
    notes = ["(paper): the authors' protocol; the others are ours (strict)."]
    if compared["reference"]:
        notes.append(f"In brackets: the difference to `{compared['reference']}`.")
    if seeds > 1:
        notes.append(f"Mean ± sample std over {seeds} seeds.")
    return "\n".join([*lines, "", " ".join(notes), ""])


def csv_text(compared: Mapping[str, Any]) -> str:
    """One CSV row per run: variant, base, best, every metric column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = compared["columns"]
    writer.writerow(["variant", "base", "best", *columns])
    for name, values in compared["runs"].items():
        writer.writerow([name, name.split("/", 1)[0], name == compared["best"],
                         *(repr(values[c]) if c in values else "" for c in columns)])
    return buffer.getvalue()
