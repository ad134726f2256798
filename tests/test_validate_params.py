"""Data-dependent run parameters are judged by validation, before any step does work.

K against the SER30K classes, the batch against the usable training dialogs, a split with no
usable dialog or image that a later step needs: `srs data validate` with run parameters, the
pipeline's validate step and a whole local pipeline run all refuse them in the first step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from srs_core.cli import main
from srs_core.config import load_config
from srs_core.data.validate import validate


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train: 30 dialogs; SER30K train: Sadness is the largest class with 7 images."""
    from srs_core.data.synth import synthesize

    root = tmp_path_factory.mktemp("demo")
    synthesize(str(root), seed=3, dialogs=30, sets=4, images=28, image_size=32)
    return root


def _roots(root: Path) -> tuple[str, str]:
    return str(root / "stickerchat"), str(root / "ser30k")


def _checked(root: Path, *overrides: str, processes: int = 1, eval_split: str = "test",
             names: dict[str, str] | None = None) -> list[str]:
    result = validate(*_roots(root), progress=False)
    cfg = load_config([], list(overrides), preset="tiny")
    return result.check_run(cfg, processes=processes, eval_split=eval_split, names=names)


def test_fitting_parameters_pass(demo: Path) -> None:
    assert _checked(demo) == []
    assert _checked(demo, "emotion.k=7", "train.batch_size=30") == []


def test_k_above_the_largest_class_names_parameter_value_and_class(demo: Path) -> None:
    problems = _checked(demo, "emotion.k=8", names={"emotion.k": "anchors_k"})
    assert problems == ["anchors_k=8 exceeds the largest SER30K class (Sadness, 7 training "
                        "images): every anchor of every class would repeat an image; lower "
                        "anchors_k to at most 7"]


def test_batch_against_usable_training_dialogs_and_processes(demo: Path) -> None:
    [problem] = _checked(demo, "train.batch_size=31")
    assert "train.batch_size=31" in problem and "30 usable training dialogs" in problem
    # 2 processes get 15 dialogs each: a batch of 16 is never filled, so no step is taken
    [problem] = _checked(demo, "train.batch_size=16", processes=2)
    assert "2 processes" in problem and "15" in problem
    assert _checked(demo, "train.batch_size=15", processes=2) == []
    # gradient accumulation multiplies the dialogs one step takes
    [problem] = _checked(demo, "train.batch_size=10", "train.grad_accumulation=4")
    assert "train.grad_accumulation=4" in problem


def _without(demo: Path, tmp_path: Path, *relative: str) -> Path:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(demo, copy)
    for name in relative:
        (copy / name).write_text("", encoding="utf-8")
    return copy


def test_a_split_a_later_step_needs_without_usable_dialogs(demo: Path, tmp_path: Path) -> None:
    data = _without(demo, tmp_path, "stickerchat/release_val.json")
    [problem] = _checked(data)
    assert "StickerChat val has no usable dialog" in problem and "eval.protocol=strict" in problem
    # the paper protocol selects on test instead: val is then not needed
    assert _checked(data, "eval.protocol=paper") == []
    [problem] = _checked(data, eval_split="val", names={"eval_split": "eval_split"})
    assert "eval_split=val" in problem


def test_a_class_without_training_images_and_an_empty_ser30k_val(
    demo: Path, tmp_path: Path
) -> None:
    from srs_core.data.ser30k import EMOTIONS, read_annotations

    data = _without(demo, tmp_path)
    annotations = data / "ser30k" / "Annotations" / "image-level"
    (annotations / "val.json").write_text('{"annotations": []}', encoding="utf-8")
    train = json.loads((annotations / "train.json").read_text(encoding="utf-8"))
    first = read_annotations(str(data / "ser30k"), "train")[0]
    gone = EMOTIONS[first.label]
    train["annotations"] = [i for i in train["annotations"] if i["anno"] != first.label + 1]
    (annotations / "train.json").write_text(json.dumps(train), encoding="utf-8")
    problems = _checked(data)
    assert any(f"no usable training image of class {gone}:" in p for p in problems), problems
    assert any("SER30K val has no usable image" in p for p in problems), problems


def test_cli_validate_takes_run_parameters(demo: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    sc, ser = _roots(demo)
    assert main(["data", "validate", "--stickerchat", sc, "--ser30k", ser, "--preset", "tiny"]) == 0
    capsys.readouterr()
    code = main(["data", "validate", "--stickerchat", sc, "--ser30k", ser, "--anchors-k", "8"])
    out = capsys.readouterr().out
    assert code == 2  # a parameter that does not fit the data: a configuration error
    assert "--anchors-k=8 exceeds the largest SER30K class (Sadness, 7 training images)" in out
    config = tmp_path / "run.yaml"
    config.write_text("preset: tiny\ntrain:\n  batch_size: 64\n", encoding="utf-8")
    code = main(["data", "validate", "--stickerchat", sc, "--ser30k", ser, "--config",
                 str(config), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 2 and not result["ok"]
    [problem] = result["parameters"]
    assert problem.startswith("train.batch_size=64 ")


def test_validate_step_refuses_k_above_the_largest_class(
    demo: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from kfp import local

    import components

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path),
               raise_on_error=True)
    sc, ser = _roots(demo)
    arguments = {"stickerchat": sc, "ser30k": ser, "strict": False, "preset": "tiny"}
    components.validate(anchors_k=7, **arguments)
    with pytest.raises(RuntimeError, match="validate.*FAILURE"):
        components.validate(anchors_k=8, **arguments)
    assert "anchors_k=8 exceeds the largest SER30K class (Sadness, 7 training images)" in \
        "".join(capfd.readouterr())
    # local training runs gpus_per_node processes whatever train_nodes says
    components.validate(anchors_k=4, batch_size=16, train_nodes=2, training_backend="local",
                        **arguments)
    with pytest.raises(RuntimeError, match="validate.*FAILURE"):
        components.validate(anchors_k=4, batch_size=16, train_nodes=2,
                            training_backend="pytorchjob", **arguments)
    assert "batch_size=16 needs 16 training dialogs per process" in "".join(capfd.readouterr())


def test_local_pipeline_run_fails_in_validate_before_any_work(
    demo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    code = main(["pipeline", "run", "--local", "--data", str(demo), "--out", str(out),
                 "--param", "anchors_k=8"])
    assert code == 1
    assert "Inner task failed: 'validate'" in caplog.text
    assert "anchors_k=8 exceeds the largest SER30K class" in "".join(capfd.readouterr())
    assert not (out / "sentiment").exists() and not (out / "teacher").exists()
