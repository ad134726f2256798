"""Preemption that loses no step: SIGTERM to `srs train` (alone, or to torchrun, which passes
it to its workers) finishes the step, checkpoints it on every rank's agreement and exits 143;
the rerun retraces an uninterrupted run exactly (real processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from srs_core.data.synth import synthesize
from srs_core.runtime.checkpoint import CheckpointManager
from srs_core.runtime.trainer import PREEMPTED_EXIT_CODE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    synthesize(out, seed=11, dialogs=48, sets=10, images=70)
    return out


def _launch(demo: Path, output: Path, log: Path, nproc: int, workers: int) -> subprocess.Popen:
    """`srs train` (12 steps of 4 dialogs in all, no periodic checkpoint) as one process or
    under torchrun with ``nproc`` ranks, with ``workers`` loader workers each."""
    launcher = (["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
                if nproc > 1 else [])
    args = [f"data.stickerchat={demo / 'stickerchat'}", f"train.output={output}",
            "train.batch_size=4", "train.log_every=1", "eval.batch_size=16",
            f"train.epochs={nproc}", "train.checkpoint_every=1000", "loss.emotion=false",
            f"train.num_workers={workers}"]
    command = [sys.executable, *launcher, "-m", "srs_core.cli", "train", "--preset", "tiny",
               *args]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def _logged_steps(log: Path) -> list[int]:
    return [int(n) for n in re.findall(r" step (\d+)/12 ", log.read_text())]


def _losses(output: Path) -> dict[int, float]:
    history = [json.loads(line) for line in (output / "history.jsonl").open()]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.mark.parametrize(("nproc", "workers", "group"),
                         [(1, 0, False), (2, 0, False), (1, 1, True), (2, 0, True)])
def test_sigterm_checkpoints_the_finished_step_and_the_rerun_is_exact(demo, tmp_path, nproc,
                                                                      workers, group) -> None:
    """SIGTERM to the one process (a kubelet, docker stop), or to its whole group (a
    terminal, `srs job run --local`): a loader worker must outlive it, and torchrun's workers
    get it twice (directly and passed on)."""
    output, log = tmp_path / "run", tmp_path / "first.log"
    first = _launch(demo, output, log, nproc, workers)
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None and not _logged_steps(log)[2:]:
        time.sleep(0.05)
    assert first.poll() is None, log.read_text()[-3000:]
    if group:
        os.killpg(first.pid, signal.SIGTERM)
    else:
        os.kill(first.pid, signal.SIGTERM)
    sent = time.time()
    code = first.wait(timeout=120)
    assert time.time() - sent < 60  # bounded: a step and a checkpoint
    text = log.read_text()
    if nproc == 1:
        assert code == PREEMPTED_EXIT_CODE, text[-3000:]
    assert "stopped by SIGTERM after step" in text, text[-3000:]
    state = CheckpointManager(str(output / "checkpoints")).latest()[1]
    logged = _logged_steps(log)
    assert state["step"] == max(logged) < 12  # every finished step is in the checkpoint

    second = _launch(demo, output, tmp_path / "second.log", nproc, workers)
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert f"resumed from step {state['step']} " in (tmp_path / "second.log").read_text()

    reference = _launch(demo, tmp_path / "reference", tmp_path / "reference.log", nproc,
                        workers)
    assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    expected = _losses(tmp_path / "reference")
    assert sorted(expected) == list(range(1, 13))
    assert _losses(output) == expected
    resumed = CheckpointManager(str(output / "checkpoints")).latest()[1]["model"]
    uninterrupted = CheckpointManager(str(tmp_path / "reference" / "checkpoints")).latest()[1]
    assert all(torch.equal(resumed[k], uninterrupted["model"][k]) for k in resumed)
