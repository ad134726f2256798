"""The local backend runs a REAL ``torchrun --standalone`` with 2 processes (gloo, CPU).

The entrypoint is a tiny probe module written to tmp_path instead of training, so that these
tests check the launcher (process group, rendezvous, output, exit codes, stop), not the model.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from srs_core.errors import JobError
from srs_core.launch import LocalTorchrun, run_local

PROBE = '''
import os, sys, time
from pathlib import Path
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([rank + 1.0])
dist.all_reduce(total)
pid_file = Path(os.environ["PROBE_DIR"], f"pid-{rank}")
pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
pid_file.with_suffix(".tmp").rename(pid_file)  # the test polls for complete files
# One write per line (as logging does): the ranks share an unbuffered pipe, and print()'s
# separate write of the newline would let the other rank's line slip in between.
sys.stdout.write(f"rank {rank}/{world} sum {total.item():g} args {' '.join(sys.argv[1:])}\\n")
sys.stdout.flush()
if "--sleep" in sys.argv:
    time.sleep(600)
if f"--fail-rank={rank}" in sys.argv:
    print(f"rank {rank} giving up", file=sys.stderr, flush=True)
    sys.exit(3)
dist.destroy_process_group()
'''

pytestmark = pytest.mark.slow


@pytest.fixture()
def probe(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "srs_probe.py").write_text(PROBE)
    return {"PYTHONPATH": str(tmp_path), "PROBE_DIR": str(tmp_path)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _probe_pids(env: dict[str, str]) -> list[int]:
    return [int(p.read_text()) for p in Path(env["PROBE_DIR"]).glob("pid-[0-9]")]


def test_two_processes_rendezvous_all_reduce_and_report(probe, caplog):
    caplog.set_level(logging.INFO, logger="srs_core.launch")
    result = run_local(["train", "--preset", "tiny"], nproc=2, env=probe, timeout=300,
                       module="srs_probe")
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank "))
    assert lines == ["rank 0/2 sum 3 args train --preset tiny",
                     "rank 1/2 sum 3 args train --preset tiny"]
    assert any("rank 0/2 sum 3" in r.getMessage() for r in caplog.records)  # streamed to log


def test_failing_worker_is_a_job_error_with_its_last_output(probe):
    with pytest.raises(JobError) as info:
        run_local(["--fail-rank=1"], nproc=2, env=probe, timeout=300, module="srs_probe")
    message = str(info.value)
    assert "exited with code 1" in message  # torchrun's own code when a worker fails
    # torchrun's failure table (which worker it names varies under load: see the next test)
    assert "(rank : " in message and "exitcode : " in message
    assert "rank 1 giving up" in message  # the worker's own last words
    assert "Traceback" not in message  # torchrun's traceback of itself is noise


def test_a_worker_torchrun_stopped_is_not_named_as_the_cause() -> None:
    """torchrun's "root cause" is the earliest failure in whole seconds: a worker it stopped
    itself (SIGTERM) in the same second may head the table; the worker that failed goes first."""
    from srs_core.launch.local import _failed_ranks

    table = [
        "Failures:", "[1]:", "  time      : 2026-11-25_09:16:38",
        "  rank      : 1 (local_rank: 1)", "  exitcode  : 3 (pid: 84)", "  error_file: <N/A>",
        "Root Cause (first observed failure):", "[0]:",
        "  rank      : 0 (local_rank: 0)", "  exitcode  : -15 (pid: 83)", "  error_file: <N/A>",
    ]
    assert _failed_ranks(table) == [
        "rank : 1 (local_rank: 1); exitcode : 3 (pid: 84); error_file: <N/A>",
        "rank : 0 (local_rank: 0); exitcode : -15 (pid: 83); error_file: <N/A>",
    ]


def test_timeout_kills_the_whole_process_group(probe):
    run = LocalTorchrun(["--sleep"], nproc=2, env=probe, module="srs_probe", grace_seconds=5)
    run.start()
    deadline = time.monotonic() + 120
    while len(_probe_pids(probe)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_probe_pids(probe)) == 2, "the probes never started"
    with pytest.raises(JobError, match="timed out"):
        run.wait(timeout=0.1)  # measured from start(), so already past
    assert not _alive(run.pid)
    assert not any(_alive(pid) for pid in _probe_pids(probe))


def test_sigterm_cancels_the_local_run(probe):
    before = signal.getsignal(signal.SIGTERM)

    def terminate_when_running() -> None:
        deadline = time.monotonic() + 120
        while len(_probe_pids(probe)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_running, daemon=True).start()
    with pytest.raises(JobError, match="cancelled"):
        run_local(["--sleep"], nproc=2, env=probe, timeout=300, module="srs_probe",
                  grace_seconds=5)
    assert not any(_alive(pid) for pid in _probe_pids(probe))
    assert signal.getsignal(signal.SIGTERM) is before


def test_cluster_torchrun_settings_do_not_leak_into_a_local_run(monkeypatch):
    monkeypatch.setenv("PET_NNODES", "4")
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    run = LocalTorchrun(["train"], nproc=2, env={"EXTRA": "1"})
    env = run.environment()
    assert "PET_NNODES" not in env and "PYTHONUNBUFFERED" not in env and env["EXTRA"] == "1"
    assert run.command()[1:] == ["-m", "torch.distributed.run", "--standalone",
                                 "--nproc-per-node", "2", "-m", "srs_core.cli", "train"]


def test_nproc_must_be_positive():
    with pytest.raises(JobError, match="nproc=0"):
        LocalTorchrun(["train"], nproc=0)
