"""Resumes that refuse to lie: a checkpoint records its run's settings and a resume with other
settings is refused (or, asked for, restarts the schedule from its weights); the last few
checkpoints are kept and a damaged newest one falls back to an older one; temporary files of
killed writers are cleaned at start (real files, real training runs)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from srs_core.cli import main
from srs_core.config import load_config
from srs_core.data.synth import synthesize
from srs_core.errors import ConfigError, StoreError
from srs_core.runtime.checkpoint import LEGACY_NAME, CheckpointManager, checkpoint_name
from srs_core.store.local import TMP_MARK


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    synthesize(out, seed=11, dialogs=48, sets=10, images=70)
    return out


def _train(demo: Path, output: Path, *extra: str, flags: tuple[str, ...] = ()) -> int:
    """`srs train` in this process on 48 demo dialogs (12 steps of 4), every step logged."""
    return main(["train", *flags, "--preset", "tiny", f"data.stickerchat={demo / 'stickerchat'}",
                 f"train.output={output}", "train.batch_size=4", "train.log_every=1",
                 "eval.batch_size=16", "train.epochs=1", "loss.emotion=false", *extra])


def _steps(output: Path) -> list[int]:
    return [torch.load(output / "checkpoints" / name, weights_only=True)["step"]
            for name in CheckpointManager(str(output / "checkpoints")).names()]


# ----------------------------------------------------------------------------- the manager


def test_the_newest_checkpoints_are_kept_and_a_damaged_one_falls_back(tmp_path, caplog) -> None:
    checkpoints = CheckpointManager(str(tmp_path), keep=2)
    for step in (3, 6, 9):
        checkpoints.save({"step": step}, step)
    assert checkpoints.names() == [checkpoint_name(9), checkpoint_name(6)]
    assert (tmp_path / "LATEST").read_text() == checkpoint_name(9) + "\n"
    newest = tmp_path / checkpoint_name(9)
    newest.write_bytes(newest.read_bytes()[:20])  # truncated, e.g. by a full disk
    with caplog.at_level(logging.WARNING):
        name, state = checkpoints.latest()
    assert (name, state["step"]) == (checkpoint_name(6), 6)
    assert f"{newest}: cannot be loaded" in caplog.text and "older checkpoint" in caplog.text
    (tmp_path / checkpoint_name(6)).write_bytes(b"")
    with pytest.raises(StoreError, match="no checkpoint loads"):
        checkpoints.latest()


def test_the_manager_keeps_and_falls_back_on_the_s3_server(s3_server: str) -> None:
    from srs_core import store

    checkpoints = CheckpointManager(store.join(s3_server, "run/checkpoints"), keep=2)
    assert checkpoints.latest() is None and checkpoints.remove_stale_temporaries() == []
    for step in (1, 2, 3):
        checkpoints.save({"step": step}, step)
    assert checkpoints.names() == [checkpoint_name(3), checkpoint_name(2)]
    store.write_bytes(checkpoints.uri(checkpoint_name(3)), b"PK\x03\x04truncated")
    assert checkpoints.latest() == (checkpoint_name(2), {"step": 2})


def test_an_older_version_latest_pt_is_read_and_later_steps_replace_it(tmp_path) -> None:
    torch.save({"step": 7}, tmp_path / LEGACY_NAME)
    checkpoints = CheckpointManager(str(tmp_path), keep=1)
    assert checkpoints.latest() == (LEGACY_NAME, {"step": 7})
    checkpoints.save({"step": 8}, 8)
    assert checkpoints.names() == [checkpoint_name(8)]  # beyond keep=1


def test_checkpoints_of_a_replaced_schedule_go_when_it_saves(tmp_path) -> None:
    checkpoints = CheckpointManager(str(tmp_path), keep=2)
    for step in (40, 50):
        checkpoints.save({"step": step}, step)
    checkpoints.save({"step": 1}, 1)  # a restarted schedule: step 50 must never win again
    assert checkpoints.names() == [checkpoint_name(1)]


def test_keep_checkpoints_is_range_checked() -> None:
    with pytest.raises(ConfigError, match="train.keep_checkpoints must be > 0"):
        load_config(overrides=["train.keep_checkpoints=0"])
    with pytest.raises(ConfigError, match="not one of refuse, restart_schedule"):
        load_config(overrides=["train.on_settings_change=ignore"])


# ----------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_a_resume_with_other_settings_is_refused_naming_each(demo, tmp_path, caplog) -> None:
    output = tmp_path / "run"
    assert _train(demo, output, "train.max_steps=3") == 0
    caplog.clear()
    assert _train(demo, output, "train.max_steps=3", "train.batch_size=6",
                  "train.seed=7") == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "\n" not in line and line.startswith(str(output / "checkpoints" / checkpoint_name(3)))
    for change in ("train.batch_size 4 -> 6", "train.seed 42 -> 7", "global_batch 4 -> 6"):
        assert change in line
    assert "--restart-schedule" in line
    assert _steps(output) == [3]  # nothing trained, nothing written

    # Asked for: the checkpoint's weights, a new schedule from step 0, said loudly; the next
    # checkpoint records the new settings, so a rerun resumes it without the switch.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _train(demo, output, "train.max_steps=2", "train.batch_size=6",
                      flags=("--restart-schedule",)) == 0
    assert "RESTARTING THE SCHEDULE" in caplog.text and "train.batch_size 4 -> 6" in caplog.text
    assert _steps(output) == [2]
    assert _train(demo, output, "train.max_steps=2", "train.batch_size=6") == 0


@pytest.mark.slow
def test_restart_schedule_starts_from_the_checkpoint_weights(demo, tmp_path) -> None:
    from srs_core.runtime.distributed import init_distributed
    from srs_core.train.loop import SelectorTrainer

    output = tmp_path / "run"
    assert _train(demo, output, "train.max_steps=2") == 0
    trained = torch.load(output / "checkpoints" / checkpoint_name(2), weights_only=True)["model"]

    cfg = load_config(preset="tiny", overrides=[
        f"data.stickerchat={demo / 'stickerchat'}", f"train.output={output}",
        "train.batch_size=4", "train.epochs=1", "loss.emotion=false", "train.seed=5",
        "train.on_settings_change=restart_schedule"])
    trainer = SelectorTrainer(cfg, init_distributed())
    assert trainer.state.step == 0 and not trainer.optimizer.state  # a fresh schedule
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)


@pytest.mark.slow
def test_an_older_checkpoint_without_settings_resumes_with_a_warning(demo, tmp_path,
                                                                     caplog) -> None:
    output = tmp_path / "run"
    assert _train(demo, output, "train.max_steps=2") == 0
    saved = torch.load(output / "checkpoints" / checkpoint_name(2), weights_only=True)
    del saved["settings"]
    for name in (checkpoint_name(2), "LATEST"):
        (output / "checkpoints" / name).unlink()
    torch.save(saved, output / "checkpoints" / LEGACY_NAME)  # as the previous version wrote
    with caplog.at_level(logging.INFO):
        assert _train(demo, output, "train.max_steps=3") == 0
    assert "records no run settings" in caplog.text and "resumed from step 2" in caplog.text
    names = CheckpointManager(str(output / "checkpoints")).names()
    assert names == [checkpoint_name(3), LEGACY_NAME]  # the old one counts among the kept


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back_and_stale_temporaries_go(demo, tmp_path,
                                                                         caplog) -> None:
    output, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert _train(demo, output, "train.max_steps=4", "train.checkpoint_every=1",
                  "train.keep_checkpoints=3") == 0
    assert _steps(output) == [4, 3, 2]
    newest = checkpoints / checkpoint_name(4)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    stale = checkpoints / f".{checkpoint_name(5)}{TMP_MARK}abc123"  # a SIGKILLed write
    stale.write_bytes(b"partial")
    with caplog.at_level(logging.INFO):
        assert _train(demo, output, "train.max_steps=5", "train.keep_checkpoints=3") == 0
    assert f"{newest}: cannot be loaded" in caplog.text
    assert "resumed from step 3" in caplog.text and not stale.exists()
    assert "temporary file(s) of interrupted checkpoint writes" in caplog.text
    assert _steps(output) == [5, 3, 2]  # the damaged step 4 is gone, replaced by 4 -> 5


@pytest.mark.slow
def test_the_teacher_refuses_a_resume_with_other_settings(tmp_path) -> None:
    from srs_core.data.synth import write_ser30k
    from srs_core.emotion.teacher import train_teacher

    write_ser30k(str(tmp_path / "ser30k"), seed=0, images=48, image_size=32)
    settings = [f"emotion.ser30k={tmp_path / 'ser30k'}", "emotion.epochs=1",
                "emotion.batch_size=16"]
    train_teacher(load_config(preset="tiny", overrides=settings), str(tmp_path / "out"))
    cfg = load_config(preset="tiny", overrides=[*settings, "emotion.epochs=2",
                                                "emotion.seed=3"])
    with pytest.raises(ConfigError, match=r"emotion\.epochs 1 -> 2; emotion\.seed 0 -> 3; "):
        train_teacher(cfg, str(tmp_path / "out"))
