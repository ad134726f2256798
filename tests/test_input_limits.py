"""Bounded input (srs_core.data.limits): a too-long dialog line is a counted problem read in
bounded memory, an oversized sticker or image is refused before it is converted or resized,
and a context's utterances are cut to the documented lengths before tokenisation, with a
named warning."""

from __future__ import annotations

import io
import json
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srs_core.cli.library import read_contexts
from srs_core.data import limits
from srs_core.data.images import decode_image, decode_npy
from srs_core.data.report import DataProblem, Report
from srs_core.data.sticker_cache import build_sticker_cache
from srs_core.data.stickerchat import iter_dialogs
from srs_core.errors import ConfigError


def _record(text: str = "你 好", set_id: int = 7, sticker_id: int = 70) -> bytes:
    return json.dumps({
        "context": [{"text": text, "id": 1, "from_id": 2, "reply_to_msg_id": None}],
        "current": {"sticker_set_id": set_id, "sticker_id": sticker_id, "sticker_alt": "😀"},
    }, ensure_ascii=False).encode()


def _release(root: Path, *lines: bytes) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "release_train.json").write_bytes(b"\n".join(lines) + b"\n")
    return str(root)


# ----------------------------------------------------------------------------- dialog lines


def test_limits_are_documented_constants() -> None:
    assert limits.MAX_LINE_BYTES == 1 << 20
    assert limits.MAX_IMAGE_SIDE == 4096
    assert limits.MAX_UTTERANCE_CHARS == 512
    assert limits.MAX_CONTEXT_UTTERANCES == 50
    assert "StickerChat" in (limits.__doc__ or "")


def test_a_line_over_the_limit_is_a_counted_skip_naming_file_and_line(tmp_path: Path) -> None:
    """Moderately over the real limit (2 MB against 1 MiB): skipped, counted, the rest read."""
    huge = _record("哈" * (1 << 20))  # 3 MB of UTF-8: a valid dialog, but no chat line is
    root = _release(tmp_path, _record("一"), huge, _record("三"))
    report = Report()
    dialogs = list(iter_dialogs(root, "train", report=report))
    assert [d.line for d in dialogs] == [1, 3]
    assert report.counts == {"line_too_long": 1} and report.skipped == 1
    [(where, detail)] = report.examples["line_too_long"]
    assert where.endswith("release_train.json:2")
    assert str(len(huge)) in detail and str(limits.MAX_LINE_BYTES) in detail
    with pytest.raises(DataProblem, match=r"release_train.json:2: line_too_long"):
        list(iter_dialogs(root, "train", strict=True))


def test_line_limit_boundary_and_no_trailing_newline(tmp_path: Path, monkeypatch) -> None:
    line = _record("边 界")
    monkeypatch.setattr(limits, "MAX_LINE_BYTES", len(line))
    root = _release(tmp_path, line, line + b" ", line)
    (tmp_path / "release_train.json").write_bytes(
        (tmp_path / "release_train.json").read_bytes().rstrip(b"\n"))  # last line unterminated
    report = Report()
    assert [d.line for d in iter_dialogs(root, "train", report=report)] == [1, 3]
    assert report.counts == {"line_too_long": 1}


def test_an_oversized_line_is_never_held_in_memory(tmp_path: Path, monkeypatch) -> None:
    """A 24 MB line against a 1000-byte limit: the reader's peak stays far below the line."""
    monkeypatch.setattr(limits, "MAX_LINE_BYTES", 1000)
    size = 24 << 20
    path = tmp_path / "release_train.json"
    with path.open("wb") as out:
        out.write(_record("前") + b"\n" + b"[" + b"1," * (size // 2) + b"1]\n" + _record("后"))
    report = Report()
    tracemalloc.start()
    try:
        lines = [d.line for d in iter_dialogs(str(tmp_path), "train", report=report)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert lines == [1, 3] and report.counts == {"line_too_long": 1}
    assert peak < 8 << 20, f"peak {peak} bytes while skipping a {size}-byte line"


def test_suggest_input_line_over_the_limit_is_a_usage_error_naming_it() -> None:
    ok = _record("好").decode()
    text = "\n".join([ok, _record("长" * (limits.MAX_LINE_BYTES // 3 + 10)).decode(), ok])
    with pytest.raises(ConfigError, match=r"dialog line 2: .* bytes; at most 1048576"):
        list(read_contexts(text))


# ----------------------------------------------------------------------------- images


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(4097, 2, 3), (2, 4097), (1, 5000, 4)])
def test_sticker_over_the_side_limit_is_refused_before_decoding(shape) -> None:
    data = _npy(np.zeros(shape, np.float64))  # floats: refused before any conversion
    with pytest.raises(DataProblem, match=r"image_too_large: .*4096") as info:
        decode_npy(data, "npy_stickers/1/2.npy")
    assert info.value.where == "npy_stickers/1/2.npy"
    assert str(max(shape[:2])) in str(info.value)


def test_sticker_at_the_side_limit_decodes() -> None:
    assert decode_npy(_npy(np.zeros((4096, 1, 3), np.uint8)), "x.npy").shape == (4096, 1, 3)


def test_image_file_over_the_side_limit_is_refused_from_its_header() -> None:
    buffer = io.BytesIO()
    Image.new("L", (4097, 1)).save(buffer, format="PNG")
    with pytest.raises(DataProblem, match=r"image_too_large: 4097x1"):
        decode_image(buffer.getvalue(), "Images/a/b.png")


def test_index_build_path_skips_the_set_of_an_oversized_sticker(tmp_path: Path,
                                                                monkeypatch) -> None:
    """The sticker cache (what `srs index build` decodes) counts it and keeps other sets."""
    monkeypatch.setattr(limits, "MAX_IMAGE_SIDE", 64)
    root = tmp_path / "stickerchat"
    for set_id, side in ((1, 32), (2, 65)):
        folder = root / "npy_stickers" / str(set_id)
        folder.mkdir(parents=True)
        (folder / "emoji_mapping.txt").write_text(f"{set_id}0\t😀\n", encoding="utf-8")
        np.save(folder / f"{set_id}0.npy", np.zeros((side, 8, 3), np.uint8))
    report = Report()
    cache = build_sticker_cache(str(root), [1, 2], str(tmp_path / "cache"), 16, report=report,
                                workers=1)
    assert sorted(cache.sets) == [1]
    assert "image_too_large" in json.dumps(report.as_dict())
    assert "65" in json.dumps(report.as_dict())


# ----------------------------------------------------------------------------- contexts


def test_bound_context_keeps_the_latest_text() -> None:
    long = "旧" * 100 + "新" * limits.MAX_UTTERANCE_CHARS
    bounded = limits.bound_context([long, "好"])
    assert bounded.utterances == ("新" * limits.MAX_UTTERANCE_CHARS, "好")
    assert (bounded.truncated, bounded.dropped) == (1, 0)
    many = [f"第{i}句" for i in range(limits.MAX_CONTEXT_UTTERANCES + 7)]
    bounded = limits.bound_context(many)
    assert bounded.utterances == tuple(many[7:])
    assert (bounded.truncated, bounded.dropped) == (0, 7)
    assert "7 oldest" in bounded.warning() and "MAX_CONTEXT_UTTERANCES" in bounded.warning()
    short = limits.bound_context(["a", "b"])
    assert short.utterances == ("a", "b") and short.warning() == ""


def test_bound_context_is_fast_on_a_megabyte_utterance(caplog) -> None:
    caplog.set_level(logging.WARNING)
    bounded = limits.bound_context(["x" * (1 << 20)])
    assert len(bounded.utterances[0]) == limits.MAX_UTTERANCE_CHARS
    assert "utterance_truncated" in bounded.warning()
