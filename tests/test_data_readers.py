"""StickerChat / SER30K readers, image decoding and candidates, on demo data and crafted files."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srs_core import store
from srs_core.data import stickerchat
from srs_core.data.candidates import build_candidates
from srs_core.data.images import decode_image, decode_npy, to_rgb_uint8
from srs_core.data.report import DataProblem, Report
from srs_core.data.ser30k import load_image, read_annotations
from srs_core.data.sticker_sets import iter_candidates, load_sticker, read_sticker_set
from srs_core.data.stickerchat import iter_dialogs, utterance_text
from srs_core.data.synth import synthesize
from srs_core.errors import DataError


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    synthesize(str(root), seed=3, dialogs=60, sets=8, images=35)
    return root


def _write_lines(root: Path, split: str, lines: list[bytes]) -> None:
    (root / f"release_{split}.json").write_bytes(b"\n".join(lines) + b"\n")


def _record(set_id: int = 7, sticker_id: int = 70, text: str = "你 好") -> dict:
    return {"context": [{"text": text, "reply_to_msg_id": None, "id": 1, "from_id": 2}],
            "current": {"from_id": 3, "reply_to_msg_id": None, "sticker_set_id": set_id,
                        "sticker_id": sticker_id, "sticker_alt": "😀"}}


# ----------------------------------------------------------------------------- dialogs


def test_reads_demo_dialogs_with_exact_64_bit_ids(demo: Path) -> None:
    root = str(demo / "stickerchat")
    dialogs = list(iter_dialogs(root, "train"))
    assert len(dialogs) == 60
    raw_lines = (demo / "stickerchat" / "release_train.json").read_text("utf-8").splitlines()
    for dialog in dialogs[:10]:
        raw = raw_lines[dialog.line - 1]
        assert f'"sticker_id": {dialog.sticker_id}' in raw  # digit for digit, no float round trip
        assert dialog.sticker_id > 2**53 and dialog.sticker_set_id > 2**53
        assert 2 <= len(dialog.context) <= 4
        assert dialog.context[0].text == json.loads(raw)["context"][0]["text"]
    assert len(list(iter_dialogs(root, "val", limit=5))) == 5


def test_utterance_text_removes_word_spaces() -> None:
    utterance = stickerchat.Utterance("我 正在 用  大 套子", 1, None, None)
    assert utterance_text(utterance) == "我正在用大套子"
    assert utterance.text == "我 正在 用  大 套子"


def test_bad_lines_are_counted_with_locations(tmp_path: Path) -> None:
    float_id = json.dumps(_record()).replace('"sticker_id": 70', '"sticker_id": 5.56e17')
    lines = [
        json.dumps(_record()).encode(),  # 1 ok
        b'{"context": [', # 2 bad json
        json.dumps({"current": {}}).encode(),  # 3 missing context
        float_id.encode(),  # 4 float id
        json.dumps(_record()).replace('"id": 1', '"id": true').encode(),  # 5 bool id
        json.dumps(_record(text="   ")).encode(),  # 6 empty context
        "你好".encode("gbk"),  # 7 not utf-8
        b"",  # 8 blank: a warning, not a skip
        json.dumps(_record()).replace('"sticker_id": 70', '"sticker_id": "70"').encode(),  # 9
        json.dumps(_record()).replace('"sticker_id": 70', '"sticker_id": "x7"').encode(),  # 10
    ]
    _write_lines(tmp_path, "train", lines)
    report = Report()
    dialogs = list(iter_dialogs(str(tmp_path), "train", report=report))
    assert [d.line for d in dialogs] == [1, 9]
    assert dialogs[1].sticker_id == 70
    uri = str(tmp_path / "release_train.json")
    expected = {"bad_json": [2], "missing_key": [3], "bad_id": [4, 5, 10], "empty_context": [6],
                "not_utf8": [7], "blank_line": [8]}
    for problem, numbers in expected.items():
        assert [w for w, _ in report.examples[problem]] == [f"{uri}:{n}" for n in numbers]
    assert report.skipped == 7 and report.errors == 7 and report.warnings == 1
    assert "bad_id" in report.render() and report.as_dict()["problems"]["bad_json"]["count"] == 1


def test_strict_raises_at_first_problem(tmp_path: Path) -> None:
    _write_lines(tmp_path, "val", [json.dumps(_record()).encode(), b"not json"])
    reader = iter_dialogs(str(tmp_path), "val", strict=True)
    assert next(reader).line == 1
    with pytest.raises(DataError, match=r"release_val.json:2: bad_json"):
        next(reader)


def test_lines_split_across_read_chunks(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(demo / "stickerchat")
    whole = list(iter_dialogs(root, "test"))
    monkeypatch.setattr(stickerchat, "_CHUNK", 7)
    assert list(iter_dialogs(root, "test")) == whole


def test_missing_release_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="release_test.json"):
        list(iter_dialogs(str(tmp_path), "test"))


# ----------------------------------------------------------------------------- candidates


def test_candidates_positive_first_then_next_nine_others() -> None:
    order = list(range(100, 115))
    assert build_candidates(114, order) == [114, *range(100, 109)]
    # positive among the first 9: kept once, the tenth sticker comes in instead
    assert build_candidates(103, order) == [103, 100, 101, 102, *range(104, 110)]
    candidates = build_candidates(100, order)
    assert len(set(candidates)) == 10 and candidates.count(100) == 1


def test_candidates_pad_small_sets_and_ignore_duplicates() -> None:
    assert build_candidates(2, [1, 2, 3]) == [2, 1, 3] + [None] * 7
    assert build_candidates(1, [1, 3, 3, 1, 4], n=5) == [1, 3, 4, None, None]
    with pytest.raises(DataError, match="sticker_not_in_set"):
        build_candidates(9, [1, 2, 3])


def test_iter_candidates_skips_unknown_set_and_missing_sticker(demo: Path, tmp_path: Path) -> None:
    manifest = json.loads((demo / "synth_manifest.json").read_text("utf-8"))
    first = manifest["sets"][0]
    set_id, sticker = first["set_id"], first["stickers"][-1]["sticker_id"]
    root = tmp_path / "sc"
    mapping = demo / "stickerchat" / "npy_stickers" / str(set_id) / "emoji_mapping.txt"
    (root / "npy_stickers" / str(set_id)).mkdir(parents=True)
    (root / "npy_stickers" / str(set_id) / "emoji_mapping.txt").write_bytes(mapping.read_bytes())
    _write_lines(root, "train", [json.dumps(_record(set_id, sticker)).encode(),
                                 json.dumps(_record(12345, 1)).encode(),
                                 json.dumps(_record(set_id, 42)).encode()])
    report = Report()
    pairs = list(iter_candidates(str(root), "train", report=report))
    assert len(pairs) == 1 and pairs[0][1][0] == sticker
    assert pairs[0][1][1:] == [s["sticker_id"] for s in first["stickers"][:9]]
    assert report.counts == {"unknown_set": 1, "sticker_not_in_set": 1}
    assert report.examples["sticker_not_in_set"][0][0].endswith("release_train.json:3")


# ----------------------------------------------------------------------------- sticker sets


def test_sticker_sets_follow_emoji_mapping_order(demo: Path) -> None:
    manifest = json.loads((demo / "synth_manifest.json").read_text("utf-8"))
    root = str(demo / "stickerchat")
    for entry in manifest["sets"][:3]:
        order = read_sticker_set(root, entry["set_id"])
        assert order == [s["sticker_id"] for s in entry["stickers"]]
        image = load_sticker(root, entry["set_id"], order[0])
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    with pytest.raises(DataError, match="unknown_set"):
        read_sticker_set(root, 1)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_sticker_arrays_of_other_layouts_are_normalised() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert (to_rgb_uint8(gray, "x")[..., 2] == gray).all()
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque pixel kept, transparent ones become white
    out = to_rgb_uint8(rgba, "x")
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 1].tolist() == [255, 255, 255]
    unit = np.full((2, 2, 3), 0.5, dtype=np.float32)
    assert to_rgb_uint8(unit, "x")[0, 0, 0] == 128
    assert to_rgb_uint8(np.full((2, 2, 3), 200.0), "x")[0, 0, 0] == 200
    assert to_rgb_uint8(np.ones((2, 2, 1), dtype=np.int64) * 9, "x").shape == (2, 2, 3)


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((1, 4, 4, 3), dtype=np.uint8), "npy_bad_shape"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "npy_bad_shape"),
        (np.zeros((3, 8, 8), dtype=np.uint8), "npy_bad_shape"),  # channels first
        (np.full((4, 4, 3), 300.0), "npy_bad_values"),
        (np.full((4, 4, 3), np.nan), "npy_bad_values"),
    ],
)
def test_bad_sticker_arrays_are_rejected_naming_the_file(array: np.ndarray, problem: str) -> None:
    with pytest.raises(DataProblem, match=rf"s/1/2\.npy: {problem}") as caught:
        decode_npy(_npy(array), "s/1/2.npy")
    assert caught.value.problem == problem


def test_pickles_and_truncated_files_are_never_loaded() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataProblem, match="npy_corrupt"):
        decode_npy(buffer.getvalue(), "evil.npy")
    data = _npy(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataProblem, match="short.npy: npy_corrupt"):
        decode_npy(data[: len(data) // 2], "short.npy")


def test_load_sticker_accepts_robust_layouts_and_names_bad_file(demo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "npy_stickers" / "5"
    folder.mkdir(parents=True)
    (folder / "1.npy").write_bytes(_npy(np.zeros((6, 5), dtype=np.uint8)))
    (folder / "2.npy").write_bytes(_npy(np.zeros((6, 5, 4), dtype=np.uint8)))
    (folder / "3.npy").write_bytes(_npy(np.zeros((6, 5, 3), dtype=np.float64)))
    (folder / "4.npy").write_bytes(_npy(np.zeros((2, 6, 5, 3), dtype=np.uint8)))
    for sticker in (1, 2, 3):
        assert load_sticker(str(tmp_path), 5, sticker).shape == (6, 5, 3)
    with pytest.raises(DataError, match=re.escape(str(folder / "4.npy"))):
        load_sticker(str(tmp_path), 5, 4)
    with pytest.raises(DataError, match="npy_missing"):
        load_sticker(str(tmp_path), 5, 99)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_decode_image_any_mode_to_rgb(mode: str) -> None:
    image = Image.new("RGB", (5, 4), (200, 100, 50)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
    pixels = decode_image(buffer.getvalue(), "x.png")
    assert pixels.shape == (4, 5, 3) and pixels.dtype == np.uint8


def test_decode_image_rejects_garbage() -> None:
    with pytest.raises(DataProblem, match="bad.jpg: image_corrupt"):
        decode_image(b"\xff\xd8\xff\xe0 definitely not a jpeg", "bad.jpg")


# ----------------------------------------------------------------------------- SER30K


def test_ser30k_annotations_and_images(demo: Path) -> None:
    root = str(demo / "ser30k")
    items = read_annotations(root, "train")
    raw = json.loads((demo / "ser30k/Annotations/image-level/train.json").read_text("utf-8"))
    assert len(items) == len(raw["annotations"]) == 35
    assert [i.label for i in items] == [a["anno"] - 1 for a in raw["annotations"]]
    formats = {item.file_name.rsplit(".", 1)[1] for item in items}
    assert formats == {"png", "jpg"}
    for item in items[:6]:
        pixels = load_image(root, item)
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8


def test_ser30k_bad_entries_are_counted(tmp_path: Path) -> None:
    entries = [{"topic": "01-a", "file_name": "1.png", "anno": 1, "text": ""},
               {"topic": "01-a", "file_name": "2.png", "anno": 9},
               {"topic": "01-a", "file_name": "3.png", "anno": "2"},
               {"topic": "01-a", "anno": 3},
               {"topic": "..", "file_name": "x.png", "anno": 3}]
    path = tmp_path / "Annotations" / "image-level" / "val.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"annotations": entries}), "utf-8")
    report = Report()
    items = read_annotations(str(tmp_path), "val", report=report)
    assert [i.file_name for i in items] == ["1.png"] and items[0].label == 0
    assert report.counts == {"bad_label": 2, "missing_key": 1, "path_escapes_root": 1}
    assert report.examples["bad_label"][0][0] == f"{path}:annotations[1]"
    with pytest.raises(DataError, match=r"annotations\[1\]: bad_label"):
        read_annotations(str(tmp_path), "val", strict=True)


# ----------------------------------------------------------------------------- S3


def test_readers_work_on_s3(demo: Path, s3_server: str) -> None:
    remote = store.join(s3_server, "data")
    store.copy_tree(str(demo), remote, progress=False)
    local_sc, remote_sc = str(demo / "stickerchat"), store.join(remote, "stickerchat")
    assert list(iter_dialogs(remote_sc, "train")) == list(iter_dialogs(local_sc, "train"))
    dialog = next(iter_dialogs(remote_sc, "val"))
    order = read_sticker_set(remote_sc, dialog.sticker_set_id)
    assert order == read_sticker_set(local_sc, dialog.sticker_set_id)
    remote_image = load_sticker(remote_sc, dialog.sticker_set_id, dialog.sticker_id)
    local_image = load_sticker(local_sc, dialog.sticker_set_id, dialog.sticker_id)
    assert (remote_image == local_image).all()
    item = read_annotations(store.join(remote, "ser30k"), "test")[0]
    assert load_image(store.join(remote, "ser30k"), item).shape == (64, 64, 3)
