"""Cancelling `srs pipeline run --local`: SIGTERM to that one process (what a container stop or
a KFP cancel sends; not to its group) stops the running step and everything it started,
torchrun in its own session included, and the run exits 143 with no process of it left."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from srs_core.process import has_environment, process_table

MARK = "SRS_TEST_CANCEL_MARK"  # inherited by every process the run starts, wherever it ends up


def _marked(token: str) -> dict[int, str]:
    """pid -> command line of every running process started under this test's mark."""
    found = {}
    for pid, entry in process_table().items():
        if pid != os.getpid() and entry.state not in "ZX" and has_environment(pid, MARK, token):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            found[pid] = cmd.decode(errors="replace").strip()
    return found


def _wait_for(predicate, timeout: float, what: str, runner: subprocess.Popen, log: Path):
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = predicate()
        if value:
            return value
        if runner.poll() is not None:
            pytest.fail(f"the run ended ({runner.returncode}) before {what}:\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"no {what} after {timeout:g}s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_sigterm_to_the_local_runner_stops_every_process_of_the_run(tmp_path: Path) -> None:
    from srs_core.data.synth import synthesize

    data = tmp_path / "data"
    synthesize(str(data), seed=1, dialogs=48, sets=6, images=56, image_size=32)
    token = uuid.uuid4().hex
    env = {**os.environ, MARK: token, "SRS_CANCEL_GRACE_SECONDS": "20",
           "SRS_CACHE_DIR": str(tmp_path / "cache")}
    log = tmp_path / "run.log"
    # Many epochs: the training step runs for minutes unless it is stopped.
    command = [sys.executable, "-m", "srs_core.cli", "pipeline", "run", "--local",
               "--data", str(data), "--out", str(tmp_path / "run"),
               "--param", "epochs=100", "--param", "anchors_k=2", "--param", "batch_size=8",
               "--param", "build_index=false",
               "--param", "overrides=emotion.epochs=1"]
    with log.open("w") as sink:
        runner = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        # the training step's torchrun has started its worker (rank 0): three generations below
        # the runner, torchrun in a session of its own
        def worker() -> list[int]:
            return [pid for pid, cmd in _marked(token).items()
                    if " srs_core.cli train " in f" {cmd} " and "torch.distributed.run" not in cmd]

        _wait_for(worker, 180, "torchrun worker of the training step", runner, log)
        running = _marked(token)
        assert any("kfp.dsl.executor_main" in cmd for cmd in running.values()), running
        assert any("torch.distributed.run" in cmd for cmd in running.values()), running

        started = time.monotonic()
        os.kill(runner.pid, signal.SIGTERM)  # the one process, not its group
        try:
            code = runner.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the runner did not exit 45s after SIGTERM:\n{log.read_text()[-3000:]}")
        took = time.monotonic() - started
        # An ended process may need a moment to leave /proc; one still working stays.
        until = time.monotonic() + 2
        left = _marked(token)
        while left and time.monotonic() < until:
            time.sleep(0.1)
            left = _marked(token)
        text = log.read_text()
        assert not left, f"processes of the cancelled run still running: {left}\n{text[-3000:]}"
        assert code == 143, text[-3000:]
        assert took < 40
        assert "received SIGTERM: passing SIGTERM to the 1 running step(s)" in text
        assert "local pipeline run cancelled by SIGTERM" in text
        tasks = [line for line in text.splitlines() if "Executing task" in line]
        assert "train-srs" in tasks[-1], tasks  # no later step started
    finally:
        for pid in _marked(token):  # whatever the outcome, leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if runner.poll() is None:
            runner.kill()
            runner.wait()


# --- the runner's cancel, without a pipeline: a step that ignores SIGTERM --------------------

# A "step" that ignores SIGTERM and starts a child in a session of its own that ignores it
# too (as torchrun is started), under the runner's cancel handling in a process of its own
# (the handling acts on every descendant of its process: never on pytest's).
_STEP = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                          "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                         start_new_session=True)
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
time.sleep(600)
"""
_RUNNER = """
import json, os, signal, subprocess, sys, time
from kfp.local import subprocess_task_handler
from pipelines.runner import PipelineCancelled, _StepStopper
signum, pids = int(sys.argv[1]), sys.argv[2]
with _StepStopper(grace=1.0) as stopper:
    step = subprocess.Popen([sys.executable, "-c", sys.argv[3], pids])
    while not os.path.exists(pids) or not open(pids).read():
        time.sleep(0.05)
    started = time.monotonic()
    os.kill(os.getpid(), signum)
    next_step = subprocess_task_handler.run_local_subprocess(["sh", "-c", "echo STARTED"])
    try:
        stopper.raise_if_cancelled()
    except PipelineCancelled as exc:
        print(json.dumps({"code": exc.exit_code, "message": str(exc), "next": next_step,
                          "seconds": time.monotonic() - started}))
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_what_ignores_the_signal_is_killed_after_the_grace(tmp_path: Path, signum: int) -> None:
    import json

    pids_file = tmp_path / "pids"
    done = subprocess.run([sys.executable, "-c", _RUNNER, str(int(signum)), str(pids_file),
                           _STEP], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent)
    step, child = (int(pid) for pid in pids_file.read_text().split())
    try:
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["code"] == 128 + signum
        assert result["next"] == 128 + signum and "STARTED" not in done.stdout  # none started
        assert "2 killed after 1s" in result["message"], result  # the step and its child
        assert 1.0 <= result["seconds"] < 15
        assert "cancelled: not starting the next step" in done.stderr
        for pid in (step, child):  # the step is gone and so is what it started
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    finally:
        for pid in (step, child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_cancel_grace_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.runner import CANCEL_GRACE_ENV, DEFAULT_CANCEL_GRACE, cancel_grace_seconds
    from srs_core.errors import ConfigError

    monkeypatch.delenv(CANCEL_GRACE_ENV, raising=False)
    assert cancel_grace_seconds() == DEFAULT_CANCEL_GRACE == 30
    monkeypatch.setenv(CANCEL_GRACE_ENV, "2.5")
    assert cancel_grace_seconds() == 2.5
    for bad in ("-1", "soon", "nan", "1e9"):
        monkeypatch.setenv(CANCEL_GRACE_ENV, bad)
        with pytest.raises(ConfigError, match=CANCEL_GRACE_ENV):
            cancel_grace_seconds()


def test_a_signal_after_the_last_step_still_cancels() -> None:
    script = """
import os, signal
from pipelines.runner import PipelineCancelled, _StepStopper
try:
    with _StepStopper(grace=5.0):
        os.kill(os.getpid(), signal.SIGTERM)
except PipelineCancelled as exc:
    print(exc.exit_code, exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("143 local pipeline run cancelled by SIGTERM"), done.stdout
    assert "0 running step(s)" in done.stderr
