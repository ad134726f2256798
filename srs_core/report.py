"""Self-contained HTML reports for the Kubeflow UI, built from the trainer's/evaluator's JSON.

Inputs (all store URIs, named by :mod:`srs_core.artifacts`):

``TrainOutputs.history``   one object per logged step ``{"step", "epoch", "loss",
                           <loss terms>, "lr", "dialogs_per_s"}`` and per validation
                           ``{"step", "val": {metric: value}}``
``EvalOutputs.metrics``    the evaluator's metrics (``METRIC_NAMES``: ``R10@1`` ... ``P@1``)
``EvalOutputs.scores()``   per dialog ``{"line", "utterances", "candidates":
                           [[set_id, sticker_id | null], ...], "scores": [...]}``

Images (the loss-curve plot, sticker thumbnails) are embedded as base64 PNG so that one HTML
file shows everything, which is what a KFP ``HTML`` artifact needs. The plot needs matplotlib;
without it the report says so and keeps its tables.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image

from srs_core import store
from srs_core.artifacts import EvalOutputs, TrainOutputs
from srs_core.errors import DataError
from srs_core.metrics import METRIC_NAMES

log = logging.getLogger(__name__)

__all__ = [
    "evaluation_report", "example_dialogs", "library_section", "loss_curves_png", "metrics_table",
    "read_jsonl",
    "training_report",
]

# Keys of a history record that are not loss terms.
_NOT_LOSS = frozenset({"step", "epoch", "lr", "dialogs_per_s", "eta_s", "val", "test_paper"})
_THUMB = 72  # thumbnail edge in pixels
_STYLE = """
body{font-family:sans-serif;margin:1.2em;color:#222}
table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}
.dialog{border:1px solid #ddd;border-radius:6px;padding:.6em;margin:.8em 0}
.utt{margin:2px 0;color:#444}
.cands{display:flex;gap:10px;margin-top:6px}
.cand{text-align:center;font-size:12px}
.cand img{border:3px solid #ddd;border-radius:4px}
.cand.hit img{border-color:#2a2}
.note{color:#888}
"""


def read_jsonl(uri: str) -> list[dict]:
    """All objects of a JSON Lines file; a broken line is a DataError naming file and line."""
    records = []
    for number, line in enumerate(store.read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{uri}:{number}: not valid JSON ({exc.msg}); rerun the step") from exc
    return records


def two_panel_figure(size: tuple[float, float], without: str) -> tuple[Any, Any, Any] | None:
    """A figure with two side-by-side axes, or None (``without``: what is lost, logged) when
    matplotlib is missing. Figure + Agg canvas rather than pyplot: no global state, safe in any
    thread."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: %s", without)
        return None
    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    return figure, left, right


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def loss_curves_png(history: list[dict]) -> bytes | None:
    """PNG of every loss term per step (left) and validation metrics (right); None if no data.

    Returns None as well when matplotlib is not installed (the report then says so).
    """
    steps = [r for r in history if "loss" in r]
    vals = _selections(history)
    if not steps and not vals:
        return None
    panels = two_panel_figure((10, 3.6), "reports have no loss-curve plot")
    if panels is None:
        return None
    figure, left, right = panels
    terms = sorted({k for r in steps for k, v in r.items()
                    if k not in _NOT_LOSS and isinstance(v, (int, float))} - {"loss"})
    for name in ["loss", *terms]:
        points = [(r["step"], r[name]) for r in steps if isinstance(r.get(name), (int, float))]
        if points:
            xs, ys = zip(*points, strict=True)
            left.plot(xs, ys, label=name, linewidth=2.2 if name == "loss" else 1.0)
    left.set_xlabel("step")
    left.set_title("training loss")
    if steps:
        left.legend(fontsize=7)
    # The protocol's metrics get a curve; counts and timings are left out.
    names = [name for name in METRIC_NAMES if any(name in r["val"] for r in vals)]
    for name in names:
        points = [(r["step"], r["val"][name]) for r in vals
                  if isinstance(r["val"].get(name), (int, float))]
        if points:
            xs, ys = zip(*points, strict=True)
            right.plot(xs, ys, marker="o", label=name)
    right.set_xlabel("step")
    paper = any("test_paper" in r for r in history)
    right.set_title("test, paper protocol (selection)" if paper else "validation")
    if names:
        right.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def metrics_table(rows: dict[str, dict[str, object]]) -> str:
    """HTML table: one row per label (e.g. split or step), one column per metric."""
    columns: list[str] = []
    for metrics in rows.values():
        columns += [k for k, v in metrics.items()
                    if k not in columns and isinstance(v, (int, float, str))]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>"
        + "".join(f"<td>{_format(metrics.get(c, ''))}</td>" for c in columns)
        + "</tr>"
        for label, metrics in rows.items()
    )
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


StickerLoader = Callable[[int, int | None], np.ndarray]


def sticker_loader(stickerchat_root: str, cache_uri: str = "") -> StickerLoader:
    """``(set_id, sticker_id | None) -> [H, W, 3] uint8``: from the sticker cache if one is
    given and has the set, else from ``npy_stickers``; None is the gray padding image."""
    from srs_core.data.images import gray_image
    from srs_core.data.sticker_sets import load_sticker

    cache = None
    if cache_uri:
        from srs_core.data.sticker_cache import load_sticker_cache

        cache = load_sticker_cache(cache_uri)

    def load(set_id: int, sticker_id: int | None) -> np.ndarray:
        if sticker_id is None:
            return gray_image(_THUMB, _THUMB)
        if cache is not None and cache.has_set(set_id):
            return np.asarray(cache.images[cache.row(set_id, sticker_id)])
        return load_sticker(stickerchat_root, set_id, sticker_id)

    return load


def _thumbnail(image: np.ndarray) -> str:
    picture = Image.fromarray(image).resize((_THUMB, _THUMB), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return _png_data_uri(buffer.getvalue())


def ranking(scores: list[float]) -> list[int]:
    """Candidate indices by descending score, under the metrics' rule (`srs_core.metrics`):
    ties rank the positive (index 0) below the negatives, NaN counts as -inf."""
    def key(i: int) -> tuple[float, bool, int]:
        score = scores[i] if not math.isnan(scores[i]) else -math.inf
        return (-score, i == 0, i)

    return sorted(range(len(scores)), key=key)


def example_dialogs(records: Iterable[dict], load: StickerLoader, top: int = 3) -> str:
    """HTML for each dialog: its utterances, the answer sticker and the model's top stickers."""
    blocks = []
    for record in records:
        candidates, scores = record["candidates"], record["scores"]
        order = ranking(scores)
        rank = order.index(0) + 1
        utterances = "".join(
            f'<div class="utt">{html.escape(str(u))}</div>' for u in record["utterances"]
        )
        shown = []
        for place, index in enumerate(order[:top], start=1):
            set_id, sticker_id = candidates[index]
            label = "answer" if index == 0 else f"candidate {index}"
            shown.append(
                f'<div class="cand{" hit" if index == 0 else ""}">'
                f'<img src="{_thumbnail(load(set_id, sticker_id))}" alt="{label}"><br>'
                f"#{place} {label}<br>{scores[index]:.3f}</div>"
            )
        answer = candidates[0]
        blocks.append(
            f'<div class="dialog"><b>line {record["line"]}</b> '
            f'<span class="note">(answer ranked {rank} of {len(scores)})</span>{utterances}'
            f'<div class="cands"><div class="cand"><img src="'
            f'{_thumbnail(load(answer[0], answer[1]))}" alt="answer"><br>answer</div>'
            f'<div class="cand">&rarr;</div>{"".join(shown)}</div></div>'
        )
    return "".join(blocks)


def _page(title: str, sections: list[str]) -> str:
    return (
        f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
        f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(sections) + "</body></html>"
    )


def _loss_section(history: list[dict]) -> str:
    png = loss_curves_png(history)
    if png is None:
        reason = "no logged steps" if not history else "matplotlib is not installed"
        return f'<h2>Loss curves</h2><p class="note">No plot: {reason}.</p>'
    return f'<h2>Loss curves</h2><img src="{_png_data_uri(png)}" alt="loss curves">'


def _history(train_output: str) -> list[dict]:
    uri = TrainOutputs(train_output).history
    return read_jsonl(uri) if store.exists(uri) else []


def _selections(history: list[dict]) -> list[dict]:
    """Model-selection records as ``{"step", "val"}``: validation ones, or the test-split ones
    of ``eval.protocol=paper`` (kept under ``test_paper`` in the history)."""
    out = []
    for record in history:
        metrics = record.get("val", record.get("test_paper"))
        if isinstance(metrics, dict):
            out.append({"step": record["step"], "val": metrics,
                        "test_paper": "test_paper" in record})
    return out


def training_report(train_output: str) -> str:
    """HTML: loss curves, and the metrics of every model-selection evaluation."""
    history = _history(train_output)
    validations = {
        f"step {r['step']}" + (" (test, paper protocol)" if r["test_paper"] else ""): r["val"]
        for r in _selections(history)
    }
    sections = [_loss_section(history)]
    if validations:
        sections.append("<h2>Validation</h2>" + metrics_table(validations))
    last = next((r for r in reversed(history) if "loss" in r), None)
    if last is not None:
        summary = {k: v for k, v in last.items() if k != "val"}
        sections.append("<h2>Last logged step</h2>" + metrics_table({"last": summary}))
    sections.append(f'<p class="note">source: {html.escape(train_output)}</p>')
    return _page("SRS training", sections)


def library_section(library: dict) -> str:
    """The answer's rank among the whole library: chance, ITA alone, ITA + ITM rerank@N."""
    methods = ["chance", "ita"] + sorted(
        (k for k in library if k.startswith("rerank@")), key=lambda k: int(k.split("@")[1]))
    labels = {"chance": "chance (k / library size)", "ita": "ITA alone"}
    rows = {labels[m] if m in labels else f"ITA top-{m.split('@')[1]} reranked by ITM":
            library[m] for m in methods if isinstance(library.get(m), dict)}
    note = (f"{int(library.get('dialogs', 0))} dialogs, {int(library.get('stickers', 0))} "
            f"stickers in the index, {int(library.get('not_in_index', 0))} answers not in it")
    return ("<h2>Library metrics (the answer among every sticker)</h2>" + metrics_table(rows)
            + f'<p class="note">{html.escape(note)}</p>')


def evaluation_report(
    eval_output: str,
    stickerchat_root: str,
    train_output: str = "",
    examples: int = 3,
    top: int = 3,
    cache_uri: str = "",
) -> str:
    """HTML: the metrics table, the first ``examples`` dialogs with their ``top`` stickers,
    and the training loss curves when ``train_output`` is given."""
    outputs = EvalOutputs(eval_output)
    payload = json.loads(store.read_text(outputs.metrics))
    # The evaluator writes {"split", "checkpoint", "metrics": {...}, "skipped": {...}}.
    metrics = payload.get("metrics", payload)
    label = str(payload.get("split", "metrics"))
    rows = {f"{label} (strict protocol)" if "paper" in payload else label: metrics}
    if isinstance(payload.get("paper"), dict):
        rows[f"{label} (paper protocol)"] = payload["paper"].get("metrics", {})
    sections = ["<h2>Metrics</h2>" + metrics_table(rows)]
    for name in ("strict", "paper"):
        text = payload.get("protocol") if name == "strict" else payload.get("paper", {}).get(
            "protocol")
        if text:
            sections.append(f'<p class="note">{name} protocol: {html.escape(str(text))}</p>')
    if payload.get("checkpoint"):
        sections.append(f'<p class="note">checkpoint: {html.escape(payload["checkpoint"])}</p>')
    if isinstance(payload.get("library"), dict):
        sections.append(library_section(payload["library"]))
    scores_uri = outputs.scores()
    if examples > 0 and store.exists(scores_uri):
        records = read_jsonl(scores_uri)[:examples]
        load = sticker_loader(stickerchat_root, cache_uri)
        sections.append(f"<h2>Example dialogs (top {top})</h2>"
                        + example_dialogs(records, load, top))
    if train_output:
        sections.append(_loss_section(_history(train_output)))
    sections.append(f'<p class="note">source: {html.escape(eval_output)}</p>')
    return _page("SRS evaluation", sections)

