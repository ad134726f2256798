"""Helper processes that never outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(expected_parent: int | None = None) -> None:
    """Have Linux SIGKILL this process when its parent exits (a no-op on other systems).

    Without it, pool and torchrun workers of a run killed with SIGKILL keep running, orphaned
    (measured: `srs sentiment` workers survived their parent). ``expected_parent`` closes the
    race of a parent that died before this call.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not allowed here (e.g. a sandbox): the worker simply keeps the default
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), signal.SIGKILL)


KEEP_FREED_MEMORY_ENV = "SRS_KEEP_FREED_MEMORY"  # "0": leave the C allocator as it is
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt() parameters, <malloc.h>
_MMAP_ABOVE = 32 << 20  # glibc's largest mmap threshold: bigger blocks still come and go
_KEEP_UP_TO = 256 << 20  # freed heap kept for reuse before any of it goes back to the kernel


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse instead of handing them back to the
    kernel, which then zero-fills and page-faults them in again on the next allocation.

    Tensors of 128 KB to a few MB (activations, augmented images) are freed and allocated
    again every step; with glibc's defaults many of them are mapped and unmapped each time
    (measured: 1,737 page faults in one hue shift of 16 images). This is PyTorch's advice to run
    CPU work on a caching allocator (jemalloc, tcmalloc), done in-process with the C library
    at hand. Returns whether the setting was made: not on other C libraries, not when the
    user tuned malloc already (``MALLOC_*`` or ``GLIBC_TUNABLES``), not with
    ``SRS_KEEP_FREED_MEMORY=0``. Inherited by forked loader workers.
    """
    if sys.platform != "linux" or os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0":
        return False
    if "malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
            name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE) and mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO))


@dataclass(frozen=True)
class ProcessEntry:
    """One process as /proc shows it; ``start`` (clock ticks after boot) tells a reused pid."""

    pid: int
    ppid: int
    group: int
    session: int
    state: str
    start: int


def _entry(pid: int) -> ProcessEntry | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except OSError:  # gone, or not ours to read
        return None
    # "pid (comm) state ppid pgrp session ... starttime": comm may hold spaces and parentheses
    fields = text[text.rfind(")") + 2:].split()
    return ProcessEntry(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0],
                        int(fields[19]))


def process_table() -> dict[int, ProcessEntry]:
    """Every process this user can see in /proc (empty where there is no /proc)."""
    table: dict[int, ProcessEntry] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit() and (entry := _entry(int(name))) is not None:
                table[entry.pid] = entry
    return table


def descendants(root: int, table: dict[int, ProcessEntry]) -> set[int]:
    """The pids of every process below ``root`` in ``table`` (children, their children...)."""
    children: dict[int, list[int]] = {}
    for entry in table.values():
        children.setdefault(entry.ppid, []).append(entry.pid)
    found: set[int] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def has_environment(pid: int, name: str, value: str) -> bool:
    """Whether process ``pid`` started with ``name=value`` in its environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return f"{name}={value}".encode() in environ.read().split(b"\0")
    except OSError:
        return False


class ProcessSet:
    """Processes once seen, each known by pid and start time, so that a pid the system gave to
    another process since is never signalled."""

    def __init__(self) -> None:
        self.seen: dict[int, ProcessEntry] = {}

    def add(self, entries: list[ProcessEntry]) -> None:
        for entry in entries:
            self.seen.setdefault(entry.pid, entry)

    def alive(self) -> list[ProcessEntry]:
        """Those still running (a zombie has ended: only its parent's wait is missing)."""
        left = []
        for pid, first in self.seen.items():
            now = _entry(pid)
            if now is not None and now.start == first.start and now.state not in "ZX":
                left.append(now)
        return left

    @staticmethod
    def signal(entries: list[ProcessEntry], signum: int) -> None:
        for entry in entries:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                now = _entry(entry.pid)
                if now is not None and now.start == entry.start:
                    os.kill(entry.pid, signum)
