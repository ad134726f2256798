"""Reports for the Kubeflow UI: plots, tables and example dialogs built from real JSON files."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srs_core import report
from srs_core.errors import DataError

SET_ID = 556029562811580420  # beyond 2**53: ids must stay exact through JSON
STICKERS = [SET_ID + 100 + i for i in range(4)]
METRICS = {"R10@1": 0.625, "R10@2": 0.75, "R10@5": 1.0, "R2@1": 0.875, "MAP": 0.7, "MRR": 0.7,
           "P@1": 0.625}


def _color(i: int) -> int:
    return 20 + 40 * i


@pytest.fixture()
def stickerchat(tmp_path: Path) -> Path:
    """A StickerChat root with one set of 4 solid-colour stickers (sticker i has value 20+40i)."""
    root = tmp_path / "stickerchat"
    folder = root / "npy_stickers" / str(SET_ID)
    folder.mkdir(parents=True)
    mapping = "".join(f"{sid}\t😀\n" for sid in STICKERS)
    (folder / "emoji_mapping.txt").write_text(mapping, encoding="utf-8")
    for i, sid in enumerate(STICKERS):
        np.save(folder / f"{sid}.npy", np.full((20, 24, 3), _color(i), dtype=np.uint8))
    return root


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")


def _history() -> list[dict]:
    steps = [{"step": s, "epoch": s // 10, "loss": 3.0 / (s + 1), "ita": 1.0 / (s + 1),
              "itm": 0.5, "lr": 1e-4, "dialogs_per_s": 12.5} for s in range(0, 30, 5)]
    vals = [{"step": 10, "val": {"R10@1": 0.25, "MRR": 0.4}},
            {"step": 25, "val": {"R10@1": 0.5, "MRR": 0.6}}]
    return steps + vals


def _images(page: str) -> list[np.ndarray]:
    """Every embedded PNG of a page, decoded."""
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in found]


def test_read_jsonl_names_file_and_line_of_a_broken_record(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"history\.jsonl:3"):
        report.read_jsonl(str(path))
    path.write_text('{"step": 1}\n\n{"step": 2}\n', encoding="utf-8")
    assert [r["step"] for r in report.read_jsonl(str(path))] == [1, 2]


def test_ranking_breaks_ties_against_the_positive_like_the_metrics() -> None:
    from srs_core.metrics import positive_ranks

    cases = [[0.5, 0.5, 0.1, 0.9], [2.0, 1.0, 1.0], [float("nan"), 0.2, 0.1], [0.3, float("nan")]]
    assert report.ranking(cases[0]) == [3, 1, 0, 2]
    assert report.ranking(cases[1]) == [0, 1, 2]
    assert report.ranking(cases[2]) == [1, 2, 0]
    for scores in cases:
        assert report.ranking(scores).index(0) + 1 == positive_ranks([scores])[0]


def test_loss_curves_png_is_a_png_or_none() -> None:
    png = report.loss_curves_png(_history())
    assert png is not None and png.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(png)).size == (1000, 360)
    assert report.loss_curves_png([]) is None


def test_loss_curves_without_matplotlib_degrade_to_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_jsonl(tmp_path / "train" / "history.jsonl", _history())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert report.loss_curves_png(_history()) is None
    page = report.training_report(str(tmp_path / "train"))
    assert "matplotlib is not installed" in page
    assert "<h2>Validation</h2>" in page  # the tables stay


def test_metrics_table_rows_and_columns() -> None:
    table = report.metrics_table({"val": {"R10@1": 0.5, "MRR": 0.25}, "test<1>": {"MRR": 1}})
    assert "<th>R10@1</th><th>MRR</th>" in table
    assert "<tr><th>val</th><td>0.5000</td><td>0.2500</td></tr>" in table
    assert "<tr><th>test&lt;1&gt;</th><td></td><td>1</td></tr>" in table


def test_training_report_has_plot_validation_table_and_last_step(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "train" / "history.jsonl", _history())
    page = report.training_report(str(tmp_path / "train"))
    assert len(_images(page)) == 1
    assert "<tr><th>step 10</th><td>0.2500</td><td>0.4000</td></tr>" in page
    assert "<tr><th>step 25</th><td>0.5000</td><td>0.6000</td></tr>" in page
    assert "<th>dialogs_per_s</th>" in page and "<td>12.5000</td>" in page


def test_training_report_without_history_says_so(tmp_path: Path) -> None:
    page = report.training_report(str(tmp_path / "nothing-yet"))
    assert "No plot: no logged steps" in page


def _eval_output(tmp_path: Path) -> Path:
    out = tmp_path / "eval"
    out.mkdir()
    payload = {"split": "test", "checkpoint": "s3://b/run/best.pt", "metrics": METRICS,
               "skipped": {"errors": 0}}
    (out / "metrics.json").write_text(json.dumps(payload), encoding="utf-8")
    pad = [SET_ID, None]
    _write_jsonl(out / "scores.jsonl", [
        # positive ranked 2nd behind sticker 2; the gray pad scores lowest
        {"line": 1, "utterances": ["你 好", "<script>x</script>"],
         "candidates": [[SET_ID, STICKERS[0]], [SET_ID, STICKERS[1]], [SET_ID, STICKERS[2]],
                        [SET_ID, STICKERS[3]], pad],
         "scores": [0.8, 0.1, 0.9, 0.2, -1.0]},
        # a tie with a negative ranks the positive below it; the pad makes the top 3
        {"line": 7, "utterances": ["哈哈"],
         "candidates": [[SET_ID, STICKERS[3]], [SET_ID, STICKERS[0]], pad],
         "scores": [0.5, 0.5, 0.4]},
        {"line": 9, "utterances": ["不 用"], "candidates": [[SET_ID, STICKERS[1]], pad],
         "scores": [1.0, 0.0]},
    ])
    return out


def test_evaluation_report_metrics_examples_and_thumbnails(
    tmp_path: Path, stickerchat: Path
) -> None:
    out = _eval_output(tmp_path)
    _write_jsonl(tmp_path / "train" / "history.jsonl", _history())
    page = report.evaluation_report(str(out), str(stickerchat), str(tmp_path / "train"),
                                    examples=2)
    for name, value in METRICS.items():
        assert f"<th>{name}</th>" in page and f"<td>{value:.4f}</td>" in page
    assert "line 1" in page and "line 7" in page and "line 9" not in page  # examples=2
    assert "answer ranked 2 of 5" in page and "answer ranked 2 of 3" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x" not in page
    images = _images(page)
    # per dialog: the answer, then the top 3; then the loss plot
    assert len(images) == 2 * 4 + 1
    # dialog 1: answer = sticker 0; top 3 = sticker 2, sticker 0 (answer), sticker 3
    colors = [int(img[36, 36, 0]) for img in images[:4]]
    assert colors == [_color(0), _color(2), _color(0), _color(3)]
    # dialog 2: answer = sticker 3; top 3 = sticker 0 (tie wins), answer, gray padding
    colors = [int(img[36, 36, 0]) for img in images[4:8]]
    assert colors == [_color(3), _color(0), _color(3), 127]


def test_evaluation_report_thumbnails_from_the_sticker_cache(
    tmp_path: Path, stickerchat: Path
) -> None:
    from srs_core.data.sticker_cache import build_sticker_cache

    out = _eval_output(tmp_path)
    cache = tmp_path / "cache"
    build_sticker_cache(str(stickerchat), [SET_ID], str(cache), image_size=16, workers=1)
    # the cache alone must suffice: remove the original stickers
    for path in (stickerchat / "npy_stickers" / str(SET_ID)).glob("*.npy"):
        path.unlink()
    page = report.evaluation_report(str(out), str(stickerchat), examples=1,
                                    cache_uri=str(cache))
    colors = [int(img[36, 36, 0]) for img in _images(page)]
    assert colors == [_color(0), _color(2), _color(0), _color(3)]


def test_evaluation_report_without_scores_still_has_metrics(tmp_path: Path) -> None:
    out = _eval_output(tmp_path)
    (out / "scores.jsonl").unlink()
    page = report.evaluation_report(str(out), str(tmp_path / "absent"))
    assert "<td>0.6250</td>" in page and "Example dialogs" not in page
