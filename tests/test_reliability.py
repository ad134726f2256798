"""Failure behaviour: bad settings refused up front, one writer per output, one clear line
per failure (real files, real processes)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srs_core.cli import describe_failure, main
from srs_core.config import load_config
from srs_core.errors import ConfigError, DataError, StoreError
from srs_core.runlock import LOCK_NAME, OutputLocked, RunLock

# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=0", "train.lr must be > 0"),
    ("train.lr=.nan", "train.lr must be a finite number"),
    ("train.min_lr=-1e-5", "train.min_lr must be >= 0"),
    ("train.min_lr=1", "train.min_lr 1.0 is above train.lr"),
    ("model.image_size=0", "model.image_size must be > 0"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be > 0"),
    ("loss.simclr_temperature=-0.1", "loss.simclr_temperature must be > 0"),
    ("model.temperature=0", "model.temperature must be > 0"),
    ("train.output=", "train.output must not be empty"),
    ("emotion.k=0", "emotion.k must be > 0"),
    ("train.num_workers=-1", "train.num_workers must be >= 0"),
    ("eval.protocol=lenient", "not one of strict, paper"),
])
def test_config_values_are_range_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(overrides=[override])


def test_every_preset_passes_its_own_rules() -> None:
    for preset in ("paper", "tiny"):
        load_config(preset=preset)


def test_duplicate_yaml_keys_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-4\n  epochs: 2\n  lr: 2e-4\n")
    with pytest.raises(ConfigError, match=r"run.yaml: duplicate key 'lr' at line 4 \(first at "
                                          r"line 2\)"):
        load_config([path])
    path.write_text("train:\n  lr: 1e-4\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        load_config([path])


@pytest.mark.parametrize(("param", "message"), [
    ("epochs=0", "train.epochs must be > 0"),
    ("anchors_k=0", "emotion.k must be > 0"),
    ("train_nodes=0", "train_nodes must be at least 1"),
    ("gpus_per_node=0", "gpus_per_node must be at least 1"),
    ("eval_split=train", "eval_split must be one of val, test"),
    ("sentiment_workers=-1", "sentiment_workers must be >= 0"),
    ("overrides=train.lrr=1", "unknown key train.lrr"),
    ("train_timeout_hours=0", "train_timeout_hours must be > 0"),
])
def test_pipeline_parameters_are_refused_before_any_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, param: str, message: str
) -> None:
    data = tmp_path / "data"
    for part in ("stickerchat", "ser30k"):
        (data / part).mkdir(parents=True)
    out = tmp_path / "out"
    code = main(["pipeline", "run", "--local", "--data", str(data), "--out", str(out),
                 "--param", param])
    assert code == 2 and message in caplog.text
    assert not out.exists()  # nothing started


def test_anchors_k_zero_means_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["emotion", "anchors", "--k", "0", "--teacher", str(tmp_path / "t.pth"),
              "--out", str(tmp_path / "a")])
    assert exited.value.code == 2
    assert "argument --k: must be >= 1, got 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one writer


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    with RunLock(out, "first"):
        holder = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputLocked, match=r"in use by another run: 'first' on host .* pid"):
            # Another live process of this host holds it: pretend to be a different pid.
            other = RunLock(out, "second")
            other.record["pid"] = os.getpid() + 1
            holder["pid"] = os.getppid()  # alive, not us
            (tmp_path / "run" / LOCK_NAME).write_text(json.dumps(holder))
            other.acquire()
    assert not (tmp_path / "run" / LOCK_NAME).exists() or json.loads(
        (tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getppid()


def test_stale_locks_are_taken_over(tmp_path: Path, monkeypatch, caplog) -> None:
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = {"host": socket.gethostname(), "pid": dead.pid, "command": "x", "token": "t",
            "started": time.time(), "heartbeat": time.time()}
    (out / LOCK_NAME).write_text(json.dumps(lock))
    with caplog.at_level(logging.WARNING), RunLock(str(out), "again"):
        assert f"pid {dead.pid} on this host is gone" in caplog.text
    # Another host's lock whose heartbeat stopped (an evicted pod) is stale after the limit.
    lock.update(host="elsewhere", pid=1, heartbeat=time.time() - 5)
    (out / LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(OutputLocked, match="host elsewhere pid 1"):
        RunLock(str(out), "again").acquire()
    monkeypatch.setenv("SRS_LOCK_STALE_SECONDS", "2")
    with caplog.at_level(logging.WARNING), RunLock(str(out), "again"):
        assert "last heartbeat is 5s old" in caplog.text
    assert not (out / LOCK_NAME).exists()


def test_an_unwritable_output_is_found_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="is not writable"):
        RunLock(str(blocker / "run"), "srs train").acquire()


def test_lock_works_on_the_s3_server(s3_server: str) -> None:
    out = f"{s3_server}/runs/locked"
    with RunLock(out, "first"):
        other = RunLock(out, "second")
        other.record["host"] = "another-pod"
        with pytest.raises(OutputLocked):
            other.acquire()


@pytest.mark.slow
def test_two_training_processes_on_one_output(tmp_path: Path) -> None:
    from srs_core.data.synth import synthesize

    synthesize(tmp_path / "data", seed=2, dialogs=64, sets=6, images=28, image_size=32)
    args = [sys.executable, "-m", "srs_core.cli", "train", "--preset", "tiny",
            f"data.stickerchat={tmp_path / 'data' / 'stickerchat'}",
            f"train.output={tmp_path / 'run'}", "train.epochs=50", "loss.emotion=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "run" / LOCK_NAME).exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "is in use by another run: 'srs train'" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


# ----------------------------------------------------------------------------- one clear line


def test_failures_become_one_line_and_an_exit_code(tmp_path: Path) -> None:
    error = OSError(28, "No space left on device", str(tmp_path / "out" / "x.pt"))
    message, code = describe_failure(error)
    assert code == 1 and message.startswith(str(tmp_path / "out" / "x.pt"))
    assert "No space left on device (free some space" in message
    assert describe_failure(PermissionError(13, "Permission denied", "/data/f"))[0] == (
        "/data/f: Permission denied (check the permissions, or choose another location)")
    assert describe_failure(MemoryError())[0].startswith("out of memory")
    assert describe_failure(ConfigError("bad key"))[1] == 2
    assert describe_failure(DataError("bad file"))[1] == 1
    message, code = describe_failure(ValueError("cannot reshape\nmore"))
    assert message == "ValueError: cannot reshape (run with --debug for details)" and code == 1


def test_the_cli_prints_no_traceback_unless_asked(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    command = [sys.executable, "-m", "srs_core.cli", "data", "synth", "--out",
               str(blocker / "demo"), "--dialogs", "3"]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr and str(blocker) in plain.stderr
    debug = subprocess.run(command, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "SRS_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_sentiment_that_scores_no_dialog_is_loud(tmp_path: Path, caplog) -> None:
    from srs_core.sentiment.run import run_sentiment

    source = tmp_path / "release_train.json"
    source.write_text('{"context": [], "current": {}}\nnot json\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        summary = run_sentiment(str(source), str(tmp_path / "train.jsonl"), workers=1)
    assert summary["dialogs"] == 0 and "no dialog could be scored" in caplog.text
    with pytest.raises(DataError):
        run_sentiment(str(source), str(tmp_path / "strict.jsonl"), workers=1, strict=True)


def test_upload_reports_what_it_did_not_copy(tmp_path: Path, s3_server: str, capsys) -> None:
    source, outside = tmp_path / "data", tmp_path / "secret.txt"
    source.mkdir()
    (source / "a.txt").write_text("a")
    outside.write_text("not for the bucket")
    (source / "leak.txt").symlink_to(outside)
    destination = f"{s3_server}/uploads/data"
    assert main(["data", "upload", str(source), destination, "--strict"]) != 0
    assert main(["data", "upload", str(source), destination]) == 1
    out = capsys.readouterr().out
    assert "copied 1 objects" in out and "not copied:" in out and "leak.txt" in out
    from srs_core import store

    assert [o.relpath for o in store.list_objects(destination)] == ["a.txt"]


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(x) for x in path.read_text().split()} if path.exists() else set()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _kill_when_workers_run(command: list[str], workers: int, tmp_path: Path,
                           ready: Path | None = None) -> set[int]:
    """Start ``command``, SIGKILL it once it has ``workers`` children (and ``ready`` exists);
    returns the children's pids."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=(tmp_path / "log").open("w"))
    deadline, seen = time.time() + 120, set()
    while time.time() < deadline and parent.poll() is None:
        seen = {c for c in _children(parent.pid) if "resource_tracker" not in
                Path(f"/proc/{c}/cmdline").read_text(errors="replace")} if _alive(
                    parent.pid) else set()
        if len(seen) >= workers and (ready is None or ready.exists()):
            break
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    assert len(seen) >= workers, (tmp_path / "log").read_text()[-2000:]
    return seen


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signals are Linux's")
def test_killed_runs_leave_no_orphan_workers(tmp_path: Path) -> None:
    from srs_core.data.synth import synthesize

    synthesize(tmp_path / "data", seed=2, dialogs=2000, sets=6, images=28, image_size=32)
    root = tmp_path / "data" / "stickerchat"
    lines = (root / "release_train.json").read_bytes()
    (root / "release_val.json").write_bytes(lines * 30)  # 60,000 dialogs: long enough to kill
    sentiment = [sys.executable, "-m", "srs_core.cli", "sentiment", "--dialogs",
                 str(root / "release_val.json"), "--out", str(tmp_path / "s" / "val.jsonl"),
                 "--workers", "2"]
    training = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "srs_core.cli", "train", "--preset", "tiny",
                f"data.stickerchat={root}", f"train.output={tmp_path / 'run'}",
                "train.epochs=20", "loss.emotion=false"]
    # Training is killed once rank 0 holds the output's lock, i.e. the workers are running.
    for command, ready in ((sentiment, None), (training, tmp_path / "run" / LOCK_NAME)):
        workers = _kill_when_workers_run(command, 2, tmp_path, ready)
        deadline = time.time() + 10
        while any(_alive(pid) for pid in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), command[2:5]
