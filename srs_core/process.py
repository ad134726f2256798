"""Helper processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

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
