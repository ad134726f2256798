"""Readers on hostile files: bounded memory, one problem per bad file, nothing outside the root,
empty and mis-encoded inputs reported loudly. Every case is a real file on disk or on the
loopback S3 server, read through the public readers, ``validate`` or the ``srs`` CLI."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srs_core import store
from srs_core.data import stickerchat
from srs_core.data.report import DataProblem, Report
from srs_core.data.ser30k import Ser30kItem, load_image, read_annotations
from srs_core.data.sticker_sets import load_sticker, read_sticker_set
from srs_core.data.stickerchat import iter_dialogs, sticker_uri
from srs_core.data.synth import synthesize
from srs_core.data.validate import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    synthesize(str(root), seed=5, dialogs=30, sets=4, images=28, image_size=32)
    return root


@pytest.fixture()
def data(demo: Path, tmp_path: Path) -> Path:
    """A private copy of the demo data that a test may break."""
    shutil.copytree(demo, tmp_path / "data", symlinks=True)
    return tmp_path / "data"


def _npy_header(shape: tuple[int, ...], descr: str = "|u1", version: int = 1) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    write = np.lib.format.write_array_header_1_0 if version == 1 else (
        np.lib.format.write_array_header_2_0)
    write(buffer, header)
    return buffer.getvalue()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _sticker_file(root: Path, set_id: int = 5, sticker_id: int = 1) -> Path:
    path = root / "npy_stickers" / str(set_id) / f"{sticker_id}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _problem(call, *args) -> DataProblem:
    with pytest.raises(DataProblem) as caught:
        call(*args)
    assert "object at 0x" not in str(caught.value)  # never a Python object's repr
    return caught.value


def _examples(result, problem: str) -> list[str]:
    return [e["where"] for e in result.as_dict()["report"]["problems"][problem]["examples"]]


def _first(root: Path, split: str = "val") -> stickerchat.Dialog:
    return next(iter_dialogs(str(root), split))


def _other_used_set(root: Path, not_this: int) -> Path:
    """The folder of a set that some training dialog uses, other than ``not_this``."""
    used = sorted({d.sticker_set_id for d in iter_dialogs(str(root), "train")} - {not_this})
    return root / "npy_stickers" / str(used[0])


# ----------------------------------------------------------------------------- 1: .npy memory


@pytest.mark.parametrize("version", [1, 2])
def test_npy_header_claiming_a_huge_array_allocates_nothing(tmp_path: Path, version: int) -> None:
    path = _sticker_file(tmp_path)
    path.write_bytes(_npy_header((20000, 20000, 3), version=version) + bytes(1000))
    tracemalloc.start()
    try:
        problem = _problem(load_sticker, str(tmp_path), 5, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # numpy.load allocated the claimed 1.2 GB before finding the EOF
    assert problem.problem == "npy_corrupt" and problem.where == str(path)
    assert "1200000000 bytes of data, but the file has 1000" in str(problem)


def test_truncated_npy_says_expected_and_present_bytes(tmp_path: Path) -> None:
    path = _sticker_file(tmp_path)
    whole = _npy(np.zeros((8, 8, 3), dtype=np.uint8))
    path.write_bytes(whole[:-50])
    problem = _problem(load_sticker, str(tmp_path), 5, 1)
    assert f"{path}: npy_corrupt: truncated" in str(problem)
    assert "192 bytes of data, but the file has 142" in str(problem)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (bytes(range(7, 107)), "it starts with 07 08 09 0a 0b 0c 0d 0e;"),
        (b"", "nothing (empty file)"),
        (_png(), "a PNG image"),
        (_npz(), "a zip archive"),
    ],
)
def test_other_files_are_not_an_npy_file(tmp_path: Path, content: bytes, says: str) -> None:
    path = _sticker_file(tmp_path)
    path.write_bytes(content)
    problem = _problem(load_sticker, str(tmp_path), 5, 1)
    assert str(problem).startswith(f"{path}: npy_corrupt: not an .npy file")
    assert says in str(problem) and "pickle" not in problem.detail


class _TouchOnUnpickle:
    """Unpickling this object creates ``path``: proof that a file was (not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_array_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    path = _sticker_file(tmp_path)
    path.write_bytes(_npy(np.array([_TouchOnUnpickle(marker)], dtype=object), allow_pickle=True))
    problem = _problem(load_sticker, str(tmp_path), 5, 1)
    assert problem.detail == "object arrays (pickles) are refused" and problem.where == str(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (_npy_header((-1, 4, 3)), "negative size"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}\n", "malformed .npy header"),
        (b"\x93NUMPY\x03\x00" + bytes(20), "version 3.0 is not supported"),
        (_npy_header((4, 4, 3), descr="<U4") + bytes(1000), "not a numeric image type"),
    ],
)
def test_bad_npy_headers_are_named(tmp_path: Path, content: bytes, says: str) -> None:
    path = _sticker_file(tmp_path)
    path.write_bytes(content)
    problem = _problem(load_sticker, str(tmp_path), 5, 1)
    assert says in str(problem) and problem.where == str(path)


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(60, dtype=np.uint8).reshape(4, 5, 3)),
        np.arange(60, dtype=">u2").reshape(4, 5, 3),
        np.linspace(0, 1, 80, dtype=np.float32).reshape(4, 5, 4),
    ],
)
def test_valid_npy_layouts_still_load_as_numpy_reads_them(tmp_path: Path, array) -> None:
    from srs_core.data.images import to_rgb_uint8

    path = _sticker_file(tmp_path)
    path.write_bytes(_npy(array))
    pixels = load_sticker(str(tmp_path), 5, 1)
    assert np.array_equal(pixels, to_rgb_uint8(np.load(path, allow_pickle=False), "x"))
    assert pixels.flags.writeable and pixels.flags.c_contiguous


def test_bad_npy_on_s3_names_the_object(s3_server: str) -> None:
    uri = sticker_uri(s3_server, 5, 1)
    store.write_bytes(uri, b"definitely not numpy")
    problem = _problem(load_sticker, s3_server, 5, 1)
    assert problem.where == uri and "not an .npy file" in str(problem)
    store.write_bytes(uri, _npy_header((30000, 30000, 3)) + bytes(64))
    assert "2700000000 bytes of data" in str(_problem(load_sticker, s3_server, 5, 1))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header says ``width x height`` (its pixel data would not fill it)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def test_image_header_claiming_a_huge_size_is_not_decoded(tmp_path: Path) -> None:
    path = tmp_path / "Images" / "t" / "big.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(_png_claiming(6000, 6000))  # 108 MB of RGB from a 100-byte file
    item = Ser30kItem("t", "big.png", 0, "", 0)
    tracemalloc.start()
    try:
        problem = _problem(load_image, str(tmp_path), item)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000
    assert problem.problem == "image_corrupt" and "6000x6000 pixels" in str(problem)
    path.write_bytes(b"GIF89a but not really")
    problem = _problem(load_image, str(tmp_path), item)
    assert problem.where == str(path) and "not an image file Pillow can read" in str(problem)


# ----------------------------------------------------------------------------- 2: bad files


def test_validate_counts_unreadable_sticker_files_and_goes_on(data: Path) -> None:
    sc = data / "stickerchat"
    dialog = _first(sc)
    order = read_sticker_set(str(sc), dialog.sticker_set_id)
    as_dir = sc / "npy_stickers" / str(dialog.sticker_set_id) / f"{order[0]}.npy"
    as_dir.unlink()
    as_dir.mkdir()  # `<sticker>.npy/` is a directory
    broken = sc / "npy_stickers" / str(dialog.sticker_set_id) / f"{order[1]}.npy"
    broken.unlink()
    broken.symlink_to(sc / "npy_stickers" / "gone.npy")
    mapping = _other_used_set(sc, dialog.sticker_set_id) / "emoji_mapping.txt"
    mapping.unlink()
    mapping.mkdir()
    test_file = sc / "release_test.json"
    test_file.unlink()
    test_file.mkdir()

    result = validate(str(sc), progress=False)
    problems = result.as_dict()["report"]["problems"]
    assert problems["unreadable_file"]["count"] == 4
    details = {e["where"]: e["detail"] for e in problems["unreadable_file"]["examples"]}
    assert details[str(as_dir)] == "is a directory, expected a file"
    assert details[str(broken)].startswith("broken symlink")
    assert details[str(mapping)] == "is a directory, expected a file"
    assert details[str(test_file)] == "is a directory, expected a file"
    assert problems["bad_set"]["count"] >= 1  # the dialogs of the set without a mapping
    assert result.stickerchat["stickers"]["bad"] == 2
    splits = result.stickerchat["splits"]
    assert splits["train"]["usable"] > 0 and splits["test"]["dialogs"] == 0
    assert result.exit_code(strict=False) == 0 and result.exit_code(strict=True) == 1
    assert "object at 0x" not in result.render()


def test_validate_counts_unreadable_ser30k_files_and_goes_on(data: Path) -> None:
    ser = data / "ser30k"
    image = next(p for p in sorted((ser / "Images").rglob("*")) if p.is_file())
    image.unlink()
    image.mkdir()
    val = ser / "Annotations" / "image-level" / "val.json"
    val.unlink()
    val.mkdir()
    result = validate(ser30k_root=str(ser), progress=False)
    problems = result.as_dict()["report"]["problems"]
    assert problems["unreadable_file"]["count"] == 2
    assert {str(val), str(image)} <= set(_examples(result, "unreadable_file"))
    assert result.ser30k["splits"]["val"]["items"] == 0
    assert result.ser30k["splits"]["train"]["usable"] > 0 and result.exit_code(False) == 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their mode: chmod 000 cannot be tested")
def test_file_without_read_permission_is_one_problem(data: Path) -> None:
    sc = data / "stickerchat"
    dialog = _first(sc)
    path = sc / "npy_stickers" / str(dialog.sticker_set_id) / f"{dialog.sticker_id}.npy"
    path.chmod(0)
    try:
        result = validate(str(sc), progress=False)
    finally:
        path.chmod(0o644)
    assert _examples(result, "unreadable_file") == [str(path)]
    assert result.as_dict()["report"]["problems"]["unreadable_file"]["examples"][0][
        "detail"] == "permission denied"


def _srs(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "srs_core.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=REPO)


def test_srs_data_validate_process_reports_bad_files_and_exits(data: Path) -> None:
    sc, ser = data / "stickerchat", data / "ser30k"
    dialog = _first(sc)
    npy = sc / "npy_stickers" / str(dialog.sticker_set_id) / f"{dialog.sticker_id}.npy"
    npy.unlink()
    npy.mkdir()
    (sc / "release_val.json").write_bytes(b"")
    image = next(p for p in sorted((ser / "Images").rglob("*")) if p.is_file())
    image.write_bytes(_npy_header((1 << 20, 1 << 20)))
    args = ("data", "validate", "--stickerchat", str(sc), "--ser30k", str(ser))
    strict = _srs(*args, "--strict")
    assert strict.returncode == 1, strict.stderr
    assert "Traceback" not in strict.stderr
    assert f"{npy}: is a directory" in strict.stdout and "empty_input" in strict.stdout
    assert "result: FAILED (strict)" in strict.stdout and str(image) in strict.stdout
    lenient = _srs(*args, "--json")
    assert lenient.returncode == 0, lenient.stderr
    problems = json.loads(lenient.stdout)["report"]["problems"]
    assert problems["unreadable_file"]["count"] == 1 and problems["empty_input"]["count"] == 1
    assert "release_val.json: no usable dialog: the file is empty" in lenient.stderr  # WARNING


def test_deeply_nested_json_is_one_bad_json_problem(tmp_path: Path) -> None:
    nested = b"[" * 200_000 + b"]" * 200_000
    (tmp_path / "release_train.json").write_bytes(nested + b"\n" + nested + b"\n")
    report = Report()
    assert list(iter_dialogs(str(tmp_path), "train", report)) == []
    assert report.counts == {"bad_json": 2, "empty_input": 1}
    path = tmp_path / "Annotations" / "image-level" / "train.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"annotations": ' + nested + b"}")
    report = Report()
    assert read_annotations(str(tmp_path), "train", report) == []
    assert report.examples["bad_json"][0][0] == str(path)


# ----------------------------------------------------------------------------- 3: the root


def test_symlinks_leading_out_of_the_root_are_refused(data: Path, tmp_path: Path) -> None:
    sc, ser = data / "stickerchat", data / "ser30k"
    outside = tmp_path / "outside"
    outside.mkdir()
    dialog = _first(sc)
    set_dir = sc / "npy_stickers" / str(dialog.sticker_set_id)
    order = read_sticker_set(str(sc), dialog.sticker_set_id)
    # a sticker file that is a symlink to a valid .npy outside the root
    escaped = set_dir / f"{order[0]}.npy"
    shutil.move(escaped, outside / "sticker.npy")
    escaped.symlink_to(outside / "sticker.npy")
    # a symlink inside the root to a file inside the root is fine
    inside = set_dir / f"{order[1]}.npy"
    inside.unlink()
    inside.symlink_to(set_dir / f"{order[2]}.npy")
    # a whole set directory moved out and linked back
    other = _other_used_set(sc, dialog.sticker_set_id)
    shutil.move(other, outside / "set")
    other.symlink_to(outside / "set", target_is_directory=True)
    # a SER30K topic directory moved out and linked back
    topic = sorted((ser / "Images").iterdir())[0]
    shutil.move(topic, outside / "topic")
    topic.symlink_to(outside / "topic", target_is_directory=True)

    problem = _problem(load_sticker, str(sc), dialog.sticker_set_id, order[0])
    assert problem.problem == "path_escapes_root" and problem.where == str(escaped)
    assert str(outside / "sticker.npy") in problem.detail
    assert load_sticker(str(sc), dialog.sticker_set_id, order[1]).shape == (32, 32, 3)

    result = validate(str(sc), str(ser), progress=False)
    escapes = _examples(result, "path_escapes_root")
    assert str(escaped) in escapes
    assert str(other / "emoji_mapping.txt") in escapes
    assert any(where.startswith(str(topic) + os.sep) for where in escapes)
    assert result.exit_code(strict=True) == 1 and result.exit_code(strict=False) == 0
    assert result.stickerchat["stickers"]["bad"] == 1  # the in-root symlink is not a problem


def test_a_root_given_through_a_symlink_is_inside_itself(data: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(data, target_is_directory=True)
    result = validate(str(link / "stickerchat"), str(link / "ser30k"), progress=False)
    assert result.report.errors == 0 and result.exit_code(strict=True) == 0


def test_annotation_paths_out_of_the_images_folder_are_refused(tmp_path: Path) -> None:
    entries = [{"topic": "01-a", "file_name": "1.png", "anno": 1},
               {"topic": "../../outside", "file_name": "x.png", "anno": 2},
               {"topic": "01-a", "file_name": "/etc/passwd", "anno": 3},
               {"topic": "01-a/../..", "file_name": "y.png", "anno": 4}]
    path = tmp_path / "Annotations" / "image-level" / "train.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"annotations": entries}), "utf-8")
    report = Report()
    assert [i.file_name for i in read_annotations(str(tmp_path), "train", report)] == ["1.png"]
    assert report.counts == {"path_escapes_root": 3}
    assert [w for w, _ in report.examples["path_escapes_root"]] == [
        f"{path}:annotations[{i}]" for i in (1, 2, 3)]
    assert "'../../outside'" in report.examples["path_escapes_root"][0][1]
    with pytest.raises(DataProblem, match=r"annotations\[1\]: path_escapes_root"):
        read_annotations(str(tmp_path), "train", strict=True)


# ----------------------------------------------------------------------------- 4: no data


def test_empty_release_file_is_an_error_in_strict_and_loud_without(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sc = data / "stickerchat"
    path = sc / "release_val.json"
    path.write_bytes(b"\n\n")
    with caplog.at_level(logging.WARNING):
        result = validate(str(sc), progress=False)
    assert _examples(result, "empty_input") == [str(path)]
    assert "none of its 2 line(s) is a usable dialog" in result.render()
    assert any("no usable dialog" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert result.exit_code(strict=False) == 0 and result.exit_code(strict=True) == 1
    path.write_bytes(b"")
    with pytest.raises(DataProblem, match="release_val.json: empty_input: the file is empty"):
        list(iter_dialogs(str(sc), "val", strict=True))


def test_ser30k_split_without_annotations(tmp_path: Path, caplog) -> None:
    path = tmp_path / "Annotations" / "image-level" / "test.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"annotations": []}', "utf-8")
    report = Report()
    with caplog.at_level(logging.WARNING):
        assert read_annotations(str(tmp_path), "test", report) == []
    assert report.examples["empty_input"] == [(str(path), "its 'annotations' list is empty")]
    assert "no usable SER30K annotation" in caplog.text
    with pytest.raises(DataProblem, match="empty_input"):
        read_annotations(str(tmp_path), "test", strict=True)


@pytest.mark.parametrize(
    ("mark", "codec", "name"),
    [(b"\xff\xfe", "utf-16-le", "UTF-16 LE"), (b"\xfe\xff", "utf-16-be", "UTF-16 BE"),
     (b"\xff\xfe\x00\x00", "utf-32-le", "UTF-32 LE"),
     (b"\x00\x00\xfe\xff", "utf-32-be", "UTF-32 BE")],
)
def test_dialog_file_in_utf16_or_utf32_is_one_problem(
    data: Path, mark: bytes, codec: str, name: str
) -> None:
    path = data / "stickerchat" / "release_train.json"
    text = path.read_text("utf-8")
    path.write_bytes(mark + text.encode(codec))
    report = Report()
    assert list(iter_dialogs(str(data / "stickerchat"), "train", report)) == []
    assert report.counts == {"not_utf8": 1}
    where, detail = report.examples["not_utf8"][0]
    assert where == str(path)
    assert detail == f"{name} (byte-order mark {mark.hex(' ')}), not UTF-8; " + (
        f"{report.skipped} line(s) skipped")
    assert report.skipped >= text.count("\n")  # every line of the file is lost, and counted


def test_dialog_file_in_gb18030_is_one_problem_with_the_offset(data: Path) -> None:
    path = data / "stickerchat" / "release_train.json"
    raw = path.read_text("utf-8").encode("gb18030")
    path.write_bytes(raw)
    with pytest.raises(UnicodeDecodeError) as caught:
        raw.decode("utf-8")
    report = Report()
    assert list(iter_dialogs(str(data / "stickerchat"), "train", report)) == []
    assert report.counts == {"not_utf8": 1}
    lines = raw.count(b"\n")
    assert report.examples["not_utf8"] == [(str(path), (
        f"not UTF-8 (first bad byte at offset {caught.value.start}); {lines} line(s) skipped"))]
    # strict mode stops at the file, with the same one problem
    with pytest.raises(DataProblem, match="first bad byte at offset"):
        list(iter_dialogs(str(data / "stickerchat"), "train", strict=True))


def test_mapping_in_utf16_names_the_encoding(data: Path) -> None:
    sc = data / "stickerchat"
    dialog = _first(sc)
    mapping = sc / "npy_stickers" / str(dialog.sticker_set_id) / "emoji_mapping.txt"
    mapping.write_bytes(mapping.read_text("utf-8").encode("utf-16"))
    problem = _problem(read_sticker_set, str(sc), dialog.sticker_set_id)
    assert problem.problem == "not_utf8" and "UTF-16 LE (byte-order mark ff fe)" in str(problem)


def test_empty_and_utf16_dialog_files_on_s3(demo: Path, s3_server: str) -> None:
    root = store.join(s3_server, "sc")
    store.write_bytes(store.join(root, "release_val.json"), b"")
    text = (demo / "stickerchat" / "release_test.json").read_text("utf-8")
    store.write_bytes(store.join(root, "release_test.json"), text.encode("utf-16"))
    report = Report()
    assert list(iter_dialogs(root, "val", report)) == []
    assert list(iter_dialogs(root, "test", report)) == []
    assert report.counts == {"empty_input": 1, "not_utf8": 1}
    assert report.examples["not_utf8"][0][0] == store.join(root, "release_test.json")
