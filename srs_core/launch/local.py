"""The local backend: the training entrypoint under ``torchrun --standalone`` on this machine.

Used by the local pipeline (``kfp.local``) instead of a PyTorchJob: the same command the job's
pods run, with N processes on one node (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import IO

from srs_core.errors import JobError
from srs_core.launch._signals import cancel_on_sigterm

log = logging.getLogger(__name__)


@dataclass
class LocalResult:
    """A finished local run: exit code 0, its duration and everything it wrote to stdout."""

    returncode: int
    seconds: float
    stdout: str


# A cancelled run's SIGTERM lets training finish its step and checkpoint (srs_core.train.loop);
# below the default grace of a cancelled local pipeline (pipelines.runner, 30 s).
LOCAL_GRACE_SECONDS = 25.0


class LocalTorchrun:
    """One ``torchrun --standalone`` process group; its output goes to our log."""

    def __init__(self, train_args: list[str], nproc: int, env: dict[str, str] | None = None,
                 module: str = "srs_core.cli", grace_seconds: float = LOCAL_GRACE_SECONDS,
                 tail_lines: int = 200):
        if nproc < 1:
            raise JobError(f"local run: nproc={nproc} must be at least 1")
        self.train_args, self.nproc, self.module = list(train_args), nproc, module
        self.extra_env = dict(env or {})
        self.grace_seconds = grace_seconds
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self._stdout: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self._cancelled = threading.Event()
        self._started = 0.0

    def command(self) -> list[str]:
        """``python -m torch.distributed.run --standalone --nproc-per-node N -m MODULE ARGS``."""
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(self.nproc), "-m", self.module, *self.train_args]

    def environment(self) -> dict[str, str]:
        """Our environment without a cluster's torchrun settings, plus ``env``."""
        # PET_* would override --standalone's single-node rendezvous (e.g. inside a pod).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("PET_") and k != "PYTHONUNBUFFERED"}
        # Unbuffered print() writes text and newline separately and the ranks share one pipe:
        # their lines would interleave mid-line. (logging writes whole lines and flushes.)
        env.update(self.extra_env)
        return env

    @property
    def pid(self) -> int:
        """Process id of torchrun, also the id of its process group."""
        if self._proc is None:
            raise JobError("local run: not started")
        return self._proc.pid

    def start(self) -> None:
        """Start torchrun in a new process group and begin streaming its output."""
        log.info("local run: %s", " ".join(self.command()[1:]))
        self._started = time.monotonic()
        self._proc = subprocess.Popen(
            self.command(), env=self.environment(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, errors="replace",
            bufsize=1, start_new_session=True)
        for stream, keep in ((self._proc.stdout, True), (self._proc.stderr, False)):
            reader = threading.Thread(target=self._pump, args=(stream, keep), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _pump(self, stream: IO[str], keep: bool) -> None:
        for line in stream:
            line = line.rstrip("\n")
            log.info("[torchrun] %s", line)
            self.tail.append(line)
            if keep:
                self._stdout.append(line)

    def cancel(self) -> None:
        """SIGTERM the whole group (safe from a signal handler); :meth:`wait` escalates."""
        self._cancelled.set()
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is already gone
            os.killpg(self.pid, signum)

    def _stop(self) -> None:
        """SIGTERM, then SIGKILL whatever is left after the grace period."""
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(self.grace_seconds)
        except subprocess.TimeoutExpired:
            log.warning("local run: torchrun ignored SIGTERM for %.0fs: killing it",
                        self.grace_seconds)
        self._signal(signal.SIGKILL)  # workers that outlived their torchrun
        self._proc.wait()

    def wait(self, timeout: float | None = None) -> LocalResult:
        """Wait for the exit; JobError on a non-zero exit, timeout or cancel (group killed)."""
        deadline = None if timeout is None else self._started + timeout
        while True:
            try:
                code = self._proc.wait(0.2)
                break
            except subprocess.TimeoutExpired:
                if self._cancelled.is_set() or (deadline and time.monotonic() > deadline):
                    self._stop()
                    for reader in self._readers:
                        reader.join(5.0)
                    why = ("cancelled" if self._cancelled.is_set()
                           else f"timed out after {timeout:g}s")
                    raise JobError(f"local run of {self.module} {why}; its processes were "
                                   f"stopped{self._tail_text()}") from None
        for reader in self._readers:
            reader.join(5.0)
        seconds = time.monotonic() - self._started
        if code != 0:
            raise JobError(f"local run of {self.module} with {self.nproc} process(es) exited "
                           f"with code {code}{self._tail_text()}")
        return LocalResult(returncode=0, seconds=seconds, stdout="\n".join(self._stdout))

    def _tail_text(self) -> str:
        """The workers' last lines and torchrun's root cause, without torchrun's own traceback."""
        lines = list(self.tail)
        # torchrun reports a failed worker with an "E... failed (exitcode: N)" line, then its
        # own traceback and a "Root Cause" table; the workers' output comes before it.
        cut = next((i for i, line in enumerate(lines) if "failed (exitcode:" in line
                    or "ChildFailedError" in line), len(lines))
        cause = _failed_ranks(lines[cut:])
        shown = lines[:cut][-20:]
        text = f" ({'; '.join(cause)})" if cause else ""
        if shown:
            text += "; last output:\n  " + "\n  ".join(shown)
        return text


def _failed_ranks(report: list[str]) -> list[str]:
    """``rank : N ...; exitcode : C ...`` of each failed worker in torchrun's failure table,
    the workers torchrun stopped itself (SIGTERM, -15) last: its "root cause" is the earliest
    failure by whole seconds, so a worker it stopped in the same second can be named instead
    of the one that failed."""
    entries: list[list[str]] = []
    for line in (" ".join(raw.split()) for raw in report):
        if line.startswith("rank "):
            entries.append([line])
        elif line.startswith(("exitcode ", "error_file")) and entries:
            entries[-1].append(line)
    unique = list(dict.fromkeys("; ".join(entry) for entry in entries))
    return sorted(unique, key=lambda entry: "exitcode : -15 " in entry)


def run_local(train_args: list[str], nproc: int, env: dict[str, str] | None = None,
              timeout: float | None = None, module: str = "srs_core.cli",
              grace_seconds: float = LOCAL_GRACE_SECONDS) -> LocalResult:
    """Run ``torchrun --standalone --nproc-per-node N -m module train_args`` and wait.

    Output streams into our log; SIGTERM (a cancelled pipeline step) stops the process group.
    """
    run = LocalTorchrun(train_args, nproc, env=env, module=module, grace_seconds=grace_seconds)
    run.start()
    try:
        with cancel_on_sigterm(run.cancel):
            return run.wait(timeout)
    finally:
        if run._proc is not None and run._proc.poll() is None:  # e.g. KeyboardInterrupt
            run._stop()
