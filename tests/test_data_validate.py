"""`srs data validate` and `srs data upload` on demo data and on a corrupted copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from srs_core import store
from srs_core.cli import main
from srs_core.data import sticker_sets, stickerchat
from srs_core.data.synth import synthesize
from srs_core.data.validate import validate


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    synthesize(str(root), seed=5, dialogs=60, sets=8, images=35)
    return root


def _validate_json(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["data", "validate", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_demo_data_passes_strict(demo: Path, capsys: pytest.CaptureFixture) -> None:
    sc, ser = str(demo / "stickerchat"), str(demo / "ser30k")
    code, result = _validate_json(capsys, "--stickerchat", sc, "--ser30k", ser, "--strict")
    assert code == 0 and result["ok"]
    assert result["report"]["errors"] == 0
    assert result["report"]["problems"]["small_set"]["severity"] == "warning"
    assert result["stickerchat"]["splits"]["train"] == {"dialogs": 60, "usable": 60,
                                                        "bad_candidates": 0}
    assert result["ser30k"]["splits"]["train"]["usable"] == 35
    assert main(["data", "validate", "--stickerchat", sc, "--strict"]) == 0
    assert "result: OK (strict)" in capsys.readouterr().out


def _corrupt(demo: Path, target: Path) -> dict[str, str]:
    """A copy of the demo data with one problem of each kind; returns their expected locations."""
    shutil.copytree(demo, target)
    sc, ser = target / "stickerchat", target / "ser30k"
    train = sc / "release_train.json"
    lines = train.read_bytes().split(b"\n")
    lines[2] = lines[2][:40]  # line 3: cut JSON
    lines[4] = "坏".encode("gbk") + lines[4]  # line 5: not UTF-8
    record = json.loads(lines[6])
    record["current"]["sticker_set_id"] = 999  # line 7: unknown set
    lines[6] = json.dumps(record).encode()
    train.write_bytes(b"\n".join(lines))

    first = next(stickerchat.iter_dialogs(str(sc), "val"))
    npy = sc / "npy_stickers" / str(first.sticker_set_id) / f"{first.sticker_id}.npy"
    npy.write_bytes(npy.read_bytes()[:100])  # truncated

    annotations = ser / "Annotations" / "image-level" / "train.json"
    document = json.loads(annotations.read_text("utf-8"))
    document["annotations"][1]["anno"] = 9
    annotations.write_text(json.dumps(document), "utf-8")
    victim = document["annotations"][2]
    missing = ser / "Images" / victim["topic"] / victim["file_name"]
    missing.unlink()
    return {
        "bad_json": f"{train}:3",
        "not_utf8": f"{train}:5",
        "unknown_set": f"{train}:7",
        "npy_corrupt": str(npy),
        "bad_label": f"{annotations}:annotations[1]",
        "image_missing": str(missing),
    }


def test_corrupted_copy_is_reported_with_locations(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    expected = _corrupt(demo, tmp_path / "bad")
    args = ("--stickerchat", str(tmp_path / "bad/stickerchat"),
            "--ser30k", str(tmp_path / "bad/ser30k"))
    code, result = _validate_json(capsys, *args, "--strict")
    assert code == 1 and not result["ok"]
    problems = result["report"]["problems"]
    for problem, where in expected.items():
        assert problems[problem]["severity"] == "error"
        assert where in [example["where"] for example in problems[problem]["examples"]], problem
    # the truncated sticker makes every dialog whose candidates include it unusable
    assert result["stickerchat"]["stickers"]["bad"] == 1
    val = result["stickerchat"]["splits"]["val"]
    assert val["bad_candidates"] >= 1 and val["usable"] + val["bad_candidates"] == val["dialogs"]
    # without --strict the data is still usable: exit 0, the report is the same
    assert main(["data", "validate", *args]) == 0
    text = capsys.readouterr().out
    assert expected["bad_json"] in text and "npy_corrupt" in text and "image_missing" in text


def test_nothing_usable_fails_even_without_strict(tmp_path: Path, capsys) -> None:
    for split in stickerchat.SPLITS:
        (tmp_path / f"release_{split}.json").write_text("not json\n", "utf-8")
    code, result = _validate_json(capsys, "--stickerchat", str(tmp_path))
    assert code == 1 and result["unusable"]
    assert result["report"]["problems"]["bad_json"]["count"] == 3


def test_each_sticker_is_loaded_once(demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    original = sticker_sets.load_sticker

    def counting(root: str, set_id: int, sticker_id: int):
        calls.append((set_id, sticker_id))
        return original(root, set_id, sticker_id)

    monkeypatch.setattr(sticker_sets, "load_sticker", counting)
    result = validate(str(demo / "stickerchat"), progress=False)
    assert len(calls) == len(set(calls)) == result.stickerchat["stickers"]["checked"]
    dialogs = sum(s["dialogs"] for s in result.stickerchat["splits"].values())
    assert len(calls) < dialogs * 10


def test_upload_is_resumable(demo: Path, s3_server: str, capsys: pytest.CaptureFixture) -> None:
    destination = store.join(s3_server, "datasets", "demo")
    total = len(list(store.list_objects(str(demo))))
    first = sorted(store.list_objects(str(demo)), key=lambda o: o.relpath)[0]
    # an "interrupted" earlier upload that got one object across
    store.upload(store.local_path(first.uri), store.join(destination, first.relpath))
    capsys.readouterr()
    assert main(["data", "upload", str(demo), destination, "--workers", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["copied"] == total - 1 and report["skipped"] == 1
    assert main(["data", "upload", str(demo), destination, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == total
    code, result = _validate_json(capsys, "--stickerchat", store.join(destination, "stickerchat"),
                                  "--strict")
    assert code == 0 and result["stickerchat"]["splits"]["train"]["usable"] == 60
