"""A study's comparison report: read every variant's outputs, compare, write and render.

:func:`compare_study` is the fan-in step's one call. For each variant of the study it reads
``<output_root>/variants/<slug>/`` (:func:`srs_core.study.run.variant_root`): the training
history (``srs/history.jsonl``) and the evaluation (``evaluate/<split>/metrics.json``); it
selects the best variant on validation MAP, and writes under ``<output_root>/comparison/``
``comparison.json`` (everything, with the best variant's checkpoint and index URIs),
``comparison.csv`` (one row per run), ``comparison.md`` and ``comparison.html`` (the table,
the per-seed runs, and validation MAP and training loss of every variant overlaid).
"""

from __future__ import annotations

import html
import io
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from srs_core import store
from srs_core.artifacts import RunOutputs
from srs_core.report import _page, _png_data_uri, metrics_table, read_jsonl, two_panel_figure
from srs_core.study import compare
from srs_core.study.run import variant_root

log = logging.getLogger(__name__)

COMPARISON_DIR = "comparison"
FILES = ("json", "csv", "md", "html")


def _curves(history: Sequence[Mapping[str, Any]]) -> tuple[list, list]:
    """(step, validation MAP) and (step, total loss) points of one run's history."""
    val = [(r["step"], r["val"]["MAP"]) for r in history
           if isinstance(r.get("val"), Mapping) and isinstance(r["val"].get("MAP"), (int, float))]
    loss = [(r["step"], r["loss"]) for r in history if isinstance(r.get("loss"), (int, float))]
    return val, loss


def overlaid_curves_png(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes | None:
    """PNG: validation MAP (left) and training loss (right) per step, one line per run."""
    curves = {name: _curves(history) for name, history in histories.items()}
    if not any(val or loss for val, loss in curves.values()):
        return None
    panels = two_panel_figure((11, 3.8), "the comparison has no curves")
    if panels is None:
        return None
    figure, left, right = panels
    for name, (val, loss) in curves.items():
        if val:
            left.plot(*zip(*val, strict=True), marker="o", label=name)
        if loss:
            right.plot(*zip(*loss, strict=True), linewidth=1.0, label=name)
    for axes, title in ((left, "validation MAP (selection)"), (right, "training loss")):
        axes.set_xlabel("step")
        axes.set_title(title)
        axes.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def comparison_html(compared: Mapping[str, Any],
                    histories: Mapping[str, Sequence[Mapping[str, Any]]],
                    title: str = "Study comparison") -> str:
    """HTML: the selection, the table (deltas, mean ± std), every run, the overlaid curves."""
    best = compared["best"]
    sections = [f"<p>Best on validation MAP: <b>{html.escape(best)}</b> (validation MAP "
                f"{compared['best_metrics']['val_MAP']:.4f}); test metrics never select.</p>",
                "<h2>Variants</h2>" + metrics_table(compare.table(compared))]
    if compared["reference"]:
        sections.append(f'<p class="note">In brackets: the difference to '
                        f'{html.escape(compared["reference"])}. (paper): the authors\' '
                        "protocol; the others are ours (strict).</p>")
    if len(compared["runs"]) > len(compared["variants"]):
        sections.append("<h2>Every run</h2>" + metrics_table(dict(compared["runs"])))
    png = overlaid_curves_png(histories)
    if png is None:
        sections.append('<h2>Curves</h2><p class="note">No plot: no history or no '
                        "matplotlib.</p>")
    else:
        sections.append(f'<h2>Curves</h2><img src="{_png_data_uri(png)}" alt="curves">')
    return _page(title, sections)


def _read_run(root: str, split: str) -> tuple[list[dict], dict[str, Any]]:
    outputs = RunOutputs(root)
    history = read_jsonl(outputs.train.history) if store.exists(outputs.train.history) else []
    evaluation = json.loads(store.read_text(outputs.evaluation(split).metrics))
    return history, evaluation


def compare_study(names: Sequence[str], output_root: str, split: str = "test",
                  indexed: bool = True, title: str = "Study comparison") -> dict[str, Any]:
    """Compare the variants ``names`` of the study under ``output_root``; write the reports.

    Returns ``comparison`` (see :func:`srs_core.study.compare.comparison`, plus ``model``:
    the best run's ``checkpoint``, ``index`` ("" without one) and ``root``), ``markdown``,
    ``html`` and ``uris`` (where each file was written).
    """
    results, histories = {}, {}
    for name in names:
        history, evaluation = _read_run(variant_root(output_root, name), split)
        results[name] = compare.run_results(history, evaluation)
        histories[name] = history
    compared = compare.comparison(results, order=list(names))
    best = RunOutputs(variant_root(output_root, compared["best"]))
    compared["model"] = {"name": compared["best"], "root": best.root,
                         "checkpoint": best.train.best, "index": best.index if indexed else ""}
    texts = {"json": json.dumps(compared, indent=2), "csv": compare.csv_text(compared),
             "md": compare.markdown(compared, title),
             "html": comparison_html(compared, histories, title)}
    uris = {kind: store.join(output_root, COMPARISON_DIR, f"comparison.{kind}") for kind in FILES}
    for kind in FILES:
        store.write_text(uris[kind], texts[kind])
    return {"comparison": compared, "markdown": texts["md"], "html": texts["html"], "uris": uris}


def record_study(done: Mapping[str, Any], variants: Sequence[Mapping[str, Any]],
                 output_root: str, kfp_run_id: str = "", registered_model: str = "",
                 alias: str = "") -> str:
    """The fan-in step in MLflow: a ``compare`` run nested under the pipeline run, with the
    best variant's metrics and every report file; the best model registered as a new version
    of ``registered_model`` ("" = none; ``alias`` set only when given); then the pipeline run
    is ended. Returns the registered version ("" when none). Never fails the step."""
    from srs_core.tracking import end_pipeline_run, register_model, step_run

    compared, model = done["comparison"], done["comparison"]["model"]
    overrides = {item["name"]: item.get("overrides", {}) for item in variants}
    version = ""
    with step_run("compare", output_root, kfp_run_id, {"srs.variant": model["name"],
                                                       "srs.checkpoint": model["checkpoint"]},
                  ) as tracker:
        tracker.log_metrics(compared["best_metrics"])
        for uri in done["uris"].values():
            tracker.log_artifact(uri, "comparison")
        if registered_model:
            version = register_model(
                registered_model, model["checkpoint"], model["index"], compared["best_metrics"],
                {"variant": model["name"], "overrides": overrides.get(model["name"], {})},
                kfp_run_id, run_id=tracker.run_id or None, alias=alias or None, root=output_root)
    end_pipeline_run(kfp_run_id, output_root)
    return version
