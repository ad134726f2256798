"""Process-level settings: the C allocator keeps freed memory for reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from srs_core.process import KEEP_FREED_MEMORY_ENV

# Allocate, fill and free eight 4 MB blocks again and again, as a training step does with its
# activations (torch's CPU tensors come from this malloc), and count the page faults of the
# repeats. Plain malloc rather than tensors: whether torch's own allocations fault depends on
# what the process freed before (measured: 16,352 faults per repeat in one run, 0 in the next).
_CHURN = """
import ctypes, json, resource
from srs_core.process import keep_freed_memory
made = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def churn(size=4 << 20):
    blocks = [libc.malloc(size) for _ in range(8)]
    for block in blocks:
        libc.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
for _ in range(3):
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"made": made, "faults_per_churn": faults / 20}))
"""


def _churn(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", KEEP_FREED_MEMORY_ENV)}
    done = subprocess.run([sys.executable, "-c", _CHURN], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults():
    left_alone = _churn(**{KEEP_FREED_MEMORY_ENV: "0"})
    kept = _churn()
    assert not left_alone["made"] and kept["made"]
    if left_alone["faults_per_churn"] < 1024:  # 4 MB of fresh pages
        pytest.skip("this C library keeps the churned blocks by itself: nothing to compare")
    assert kept["faults_per_churn"] < left_alone["faults_per_churn"] / 10


def test_a_users_own_malloc_settings_are_left_alone():
    assert not _churn(MALLOC_TRIM_THRESHOLD_="1000000")["made"]
    assert not _churn(MALLOC_ARENA_MAX="2")["made"]
    assert not _churn(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000")["made"]
