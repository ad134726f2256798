"""A full disk: every writer fails with one line naming the path and the free space, and the
previous good file stays as it was, with no temporary file left beside it.

The faults are real, made by the kernel, nothing is mocked:

- ENOSPC: a tmpfs of a few hundred KiB mounted in a user + mount namespace (``unshare -rm``,
  no root needed), with the Python code or the ``srs`` command run inside it. Skipped where
  unprivileged user namespaces are disabled.
- EFBIG and a short write: ``RLIMIT_FSIZE`` set in a subprocess (with SIGXFSZ ignored), so the
  kernel writes up to the limit, then refuses the rest.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from srs_core import store
from srs_core.config import load_config
from srs_core.data.synth import synthesize
from srs_core.errors import StoreError
from srs_core.model.checkpoint import BestCheckpoint
from srs_core.model.factory import build_model
from srs_core.model.tokenizer import SPECIAL_TOKENS, ContextTokenizer


def _unshare_works() -> bool:
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                                "mount -t tmpfs -o size=64k srs-probe /mnt 2>/dev/null || "
                                "mount -t tmpfs -o size=64k srs-probe /tmp"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


needs_userns = pytest.mark.skipif(not _unshare_works(),
                                  reason="unprivileged user + mount namespaces are disabled")


def on_full_tmpfs(mount: Path, command: list[str], size_kib: int = 256, fill: bool = False,
                  leave_kib: int | None = None,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` where ``mount`` is a fresh tmpfs of ``size_kib``, filled to the last
    byte with ``fill``, or but ``leave_kib``; it and its files vanish with the namespace."""
    mount.mkdir(parents=True, exist_ok=True)
    setup = f"mount -t tmpfs -o size={size_kib}k srs-full {shlex.quote(str(mount))}"
    filler = shlex.quote(str(mount / "filler"))
    if fill:
        setup += f" && {{ cat /dev/zero > {filler}; }} 2>/dev/null; true"
    elif leave_kib is not None:
        setup += f" && head -c {(size_kib - leave_kib) * 1024} /dev/zero > {filler}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", setup + ' && exec "$@"', "sh",
                           *command], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def assert_one_clear_line(stderr: str, path: str) -> str:
    """The last stderr line names ``path`` and the free space; no traceback."""
    assert "Traceback" not in stderr, stderr
    assert "inline_container" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    assert path in line and "free" in line, line
    return line


# Inside the namespace: a good file of each writer first, then one too big for the disk.
_WRITERS = textwrap.dedent("""
    import json, os, sys
    import torch
    from srs_core import store
    from srs_core.runtime.checkpoint import load_torch, save_torch

    root = sys.argv[1]
    results = {}

    def attempt(name, write, check):
        try:
            write()
        except BaseException as exc:
            results[name] = {"message": f"{type(exc).__name__}: {exc}", "intact": check()}
        else:
            results[name] = {"message": "no error", "intact": check()}

    ckpt = os.path.join(root, "run", "checkpoints", "latest.pt")
    good = {"w": torch.arange(10.0)}
    save_torch(good, ckpt)
    attempt("checkpoint", lambda: save_torch({"w": torch.zeros(200_000)}, ckpt),
            lambda: torch.equal(load_torch(ckpt)["w"], good["w"]))

    history = os.path.join(root, "run", "history.jsonl")
    store.write_text(history, '{"step": 1}\\n')
    attempt("history", lambda: store.write_text(history, "x" * 1_000_000),
            lambda: store.read_text(history) == '{"step": 1}\\n')

    def stream():
        with store.open_write(os.path.join(root, "out", "scores.jsonl")) as handle:
            for _ in range(1000):
                handle.write(b"y" * 1000)
    attempt("stream", stream, lambda: not store.exists(os.path.join(root, "out", "scores.jsonl")))

    source = os.path.join(sys.argv[2], "big.bin")
    with open(source, "wb") as handle:
        handle.write(os.urandom(1_000_000))
    attempt("upload", lambda: store.upload(source, os.path.join(root, "copy", "big.bin")),
            lambda: not store.exists(os.path.join(root, "copy", "big.bin")))

    # an S3 write goes through a local file in SRS_CACHE_DIR, here the full disk
    attempt("s3", lambda: store.write_bytes("s3://bucket/dir/big.bin", b"z" * 1_000_000),
            lambda: True)

    leftovers = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                 if "tmp" in f or f.startswith("srs-upload-")]
    print(json.dumps({"results": results, "leftovers": leftovers}))
""")


@needs_userns
def test_store_writers_on_a_full_disk(tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    script = tmp_path / "writers.py"
    script.write_text(_WRITERS)
    done = on_full_tmpfs(mount, [sys.executable, str(script), str(mount), str(tmp_path)],
                         env={"SRS_CACHE_DIR": str(mount / "cache"),
                              "SRS_S3_ENDPOINT": "127.0.0.1:9"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["leftovers"] == []
    where = {"checkpoint": "run/checkpoints/latest.pt", "history": "run/history.jsonl",
             "stream": "out/scores.jsonl", "upload": "copy/big.bin", "s3": "s3://bucket/dir/big.bin"}
    for name, result in report["results"].items():
        message = result["message"]
        assert result["intact"], (name, message)
        assert "\n" not in message and where[name] in message, (name, message)
        assert message.startswith("DiskFullError: "), (name, message)
        assert "no space left" in message and "free" in message, (name, message)
    assert str(mount / "cache") in report["results"]["s3"]["message"]  # where it ran out


_EFBIG = textwrap.dedent("""
    import os, sys
    import torch
    from srs_core.runtime.checkpoint import load_torch, save_torch

    path = sys.argv[1]
    save_torch({"w": torch.arange(10.0)}, path)
    try:
        save_torch({"w": torch.zeros(100_000)}, path)
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}")
    assert torch.equal(load_torch(path)["w"], torch.arange(10.0))
    assert os.listdir(os.path.dirname(path)) == ["best.pt"], os.listdir(os.path.dirname(path))
""")


def test_file_size_limit_is_a_clear_error(tmp_path: Path) -> None:
    """RLIMIT_FSIZE: the kernel writes up to the limit (a short write), then EFBIG."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    script = tmp_path / "efbig.py"
    script.write_text(_EFBIG)
    path = tmp_path / "run" / "best.pt"
    done = subprocess.run([sys.executable, str(script), str(path)], preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("DiskFullError: ") and "\n" not in line, line
    assert str(path) in line and "file-size limit" in line and "free" in line, line


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Demo data and a random (untrained) tiny best.pt: enough to run `srs index build`."""
    base = tmp_path_factory.mktemp("diskfull")
    synthesize(str(base / "data"), seed=5, dialogs=60, sets=4, images=40)
    stickerchat = str(base / "data" / "stickerchat")
    cfg = load_config(preset="tiny", overrides=[f"data.stickerchat={stickerchat}",
                                                f"train.output={base / 'run'}"])
    vocab = "\n".join([*SPECIAL_TOKENS, "你", "好"]) + "\n"
    model = build_model(cfg.model, 14, ContextTokenizer(vocab, 16).vocab_size)
    checkpoint = str(base / "best.pt")
    BestCheckpoint(model=model.state_dict(), model_config=cfg.model, vocab=vocab,
                   num_anchor_logits=14).save(checkpoint)
    return {"stickerchat": stickerchat, "checkpoint": checkpoint, "base": str(base)}


def _srs(*args: str) -> list[str]:
    return [sys.executable, "-m", "srs_core.cli", *args]


@needs_userns
def test_sentiment_on_a_full_disk_names_the_path(tiny_data: dict[str, str],
                                                  tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    dialogs = f"{tiny_data['stickerchat']}/release_train.json"
    out = str(mount / "sentiment" / "train.jsonl")
    # full at once: the run's lock fails
    done = on_full_tmpfs(mount, _srs("sentiment", "--dialogs", dialogs, "--out", out,
                                     "--workers", "1"), fill=True)
    assert done.returncode == 1, done.stderr
    assert_one_clear_line(done.stderr, str(mount / "sentiment"))
    # room for the lock and the manifest (a page each), not for the chunk (12 KiB)
    done = on_full_tmpfs(mount, _srs("sentiment", "--dialogs", dialogs, "--out", out,
                                     "--workers", "2"), leave_kib=12)
    assert done.returncode == 1, done.stderr
    line = assert_one_clear_line(done.stderr, str(mount / "sentiment" / "train.chunks" / "0"))
    assert "no space left on device" in line, line


@needs_userns
def test_index_build_on_a_full_disk_names_the_path(tiny_data: dict[str, str],
                                                   tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    done = on_full_tmpfs(mount, _srs(
        "index", "build", "--checkpoint", tiny_data["checkpoint"],
        "--stickerchat", tiny_data["stickerchat"], "--out", str(mount / "index"),
        "--cache", str(tmp_path / "sticker-cache"), "--batch-size", "16",
    ), fill=True, env={"SRS_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 1, done.stderr
    assert_one_clear_line(done.stderr, str(mount / "index"))


@needs_userns
def test_sticker_cache_on_a_full_disk_names_the_path(tiny_data: dict[str, str],
                                                     tmp_path: Path) -> None:
    """The cache's image array is a memory map: on a full disk its pages would fault (SIGBUS)
    unless the space is reserved before it is written."""
    mount = tmp_path / "disk"
    done = on_full_tmpfs(mount, _srs(
        "index", "build", "--checkpoint", tiny_data["checkpoint"],
        "--stickerchat", tiny_data["stickerchat"], "--out", str(tmp_path / "index"),
        "--cache", str(mount / "sticker-cache"), "--batch-size", "16",
    ), size_kib=128, env={"SRS_CACHE_DIR": str(mount / "scratch")})
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert_one_clear_line(done.stderr, str(mount / "scratch"))


def test_disk_full_message_names_free_space_of_nearest_parent(tmp_path: Path) -> None:
    from srs_core.store.local import disk_full

    error = disk_full(tmp_path / "a" / "b" / "c.pt", OSError(28, "No space left on device"))
    message = str(error)
    assert isinstance(error, StoreError) and str(tmp_path / "a" / "b" / "c.pt") in message
    assert "free" in message and "\n" not in message
    assert store.exists(tmp_path)  # nothing created
    assert not (tmp_path / "a").exists()
