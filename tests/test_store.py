"""The object store: the same cases against a local directory and a loopback S3 server."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from srs_core import store
from srs_core.errors import StoreAuthError, StoreError, StoreNotFound


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_server") + "/prefix"


def test_bytes_and_text_round_trip(root: str) -> None:
    uri = store.join(root, "a", "b.bin")
    store.write_bytes(uri, b"\x00\x01payload")
    assert store.read_bytes(uri) == b"\x00\x01payload"
    assert store.size(uri) == 9
    store.write_text(store.join(root, "t.txt"), "贴纸 ok")
    assert store.read_text(store.join(root, "t.txt")) == "贴纸 ok"


def test_stream_read_and_write(root: str) -> None:
    uri = store.join(root, "big.bin")
    chunk = bytes(range(256)) * 4096
    with store.open_write(uri) as handle:
        for _ in range(8):
            handle.write(chunk)
    total = 0
    with store.open_read(uri) as handle:
        while block := handle.read(100_000):
            total += len(block)
    assert total == 8 * len(chunk)


def test_failed_write_leaves_no_object(root: str) -> None:
    uri = store.join(root, "never.txt")
    with pytest.raises(RuntimeError), store.open_write(uri) as handle:
        handle.write(b"half")
        raise RuntimeError("crash mid-write")
    assert not store.exists(uri)
    assert list(store.list_objects(root)) == []


def test_overwrite_is_atomic_replacement(root: str) -> None:
    uri = store.join(root, "x.txt")
    store.write_text(uri, "old")
    with pytest.raises(RuntimeError), store.open_write(uri) as handle:
        handle.write(b"new but unfinished")
        raise RuntimeError("crash")
    assert store.read_text(uri) == "old"


def test_list_exists_delete(root: str) -> None:
    for name in ("d/1.txt", "d/2.txt", "d/sub/3.txt", "e.txt"):
        store.write_text(store.join(root, name), name)
    listed = [(o.relpath, o.size) for o in store.list_objects(store.join(root, "d"))]
    assert listed == [("1.txt", 7), ("2.txt", 7), ("sub/3.txt", 11)]
    assert store.exists(store.join(root, "e.txt"))
    store.delete(store.join(root, "e.txt"))
    assert not store.exists(store.join(root, "e.txt"))
    store.delete(store.join(root, "e.txt"))  # deleting twice is fine


def test_missing_object_is_clear(root: str) -> None:
    uri = store.join(root, "missing.txt")
    with pytest.raises(StoreNotFound, match="missing.txt"):
        store.read_bytes(uri)
    with pytest.raises(StoreNotFound):
        store.size(uri)
    assert not store.exists(uri)


def test_upload_download_fetch(root: str, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"abc" * 1000)
    uri = store.join(root, "up.bin")
    store.upload(source, uri)
    store.download(uri, tmp_path / "out" / "down.bin")
    assert (tmp_path / "out" / "down.bin").read_bytes() == b"abc" * 1000
    fetched = store.fetch(uri)
    assert fetched.read_bytes() == b"abc" * 1000
    store.write_bytes(uri, b"changed")
    assert store.fetch(uri).read_bytes() == b"changed"


@pytest.mark.parametrize("bad", ["../escape.txt", "/etc/passwd", "a/../../b"])
def test_keys_cannot_escape_their_prefix(root: str, bad: str) -> None:
    with pytest.raises(StoreError, match="escapes"):
        store.join(root, bad)


def test_copy_tree_resumes_without_resending(root: str, tmp_path: Path) -> None:
    src = tmp_path / "dataset"
    for i in range(6):
        (src / "sub").mkdir(parents=True, exist_ok=True)
        (src / "sub" / f"{i}.bin").write_bytes(bytes([i]) * (100 + i))
    dst = store.join(root, "copy")
    # An interrupted earlier run: two objects finished, one left truncated.
    store.upload(src / "sub" / "0.bin", store.join(dst, "sub/0.bin"))
    store.upload(src / "sub" / "1.bin", store.join(dst, "sub/1.bin"))
    store.write_bytes(store.join(dst, "sub/2.bin"), b"\x02" * 10)
    report = store.copy_tree(str(src), dst, workers=3, progress=False)
    assert (report.copied, report.skipped) == (4, 2)
    assert report.bytes == sum(100 + i for i in range(2, 6))
    assert store.read_bytes(store.join(dst, "sub/2.bin")) == b"\x02" * 102
    again = store.copy_tree(str(src), dst, progress=False)
    assert (again.copied, again.skipped) == (0, 6)
    back = tmp_path / "back"
    store.copy_tree(dst, str(back), progress=False)
    assert sorted(p.name for p in (back / "sub").iterdir()) == [f"{i}.bin" for i in range(6)]


def test_fetch_tree(root: str) -> None:
    store.write_text(store.join(root, "tree/a.txt"), "A")
    store.write_text(store.join(root, "tree/b/c.txt"), "C")
    local = store.fetch_tree(store.join(root, "tree"))
    assert (local / "a.txt").read_text() == "A"
    assert (local / "b" / "c.txt").read_text() == "C"


def test_local_writes_leave_no_temp_files(tmp_path: Path) -> None:
    store.write_text(str(tmp_path / "f.txt"), "x")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert store.read_text(f"file://{tmp_path}/f.txt") == "x"


def test_missing_bucket_is_clear(s3_env: str) -> None:
    with pytest.raises(StoreNotFound, match="bucket 'no-such-bucket-x' does not exist"):
        store.read_bytes("s3://no-such-bucket-x/key")


class _DenyingS3(BaseHTTPRequestHandler):
    """Answers every request the way S3/MinIO answers an unknown access key."""

    def _deny(self) -> None:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
            b"<Message>The Access Key Id you provided does not exist in our records.</Message>"
            b"<Resource>/</Resource><RequestId>1</RequestId><HostId>1</HostId></Error>"
        )
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = _deny

    def log_message(self, *args: object) -> None:
        pass


def test_bad_credentials_never_print_the_secret(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("SRS_S3_ENDPOINT", f"127.0.0.1:{server.server_port}")
        monkeypatch.setenv("SRS_S3_REGION", "us-east-1")
        monkeypatch.setenv("SRS_S3_SECRET_KEY", "super-secret-do-not-print")
        with pytest.raises(StoreAuthError, match="SRS_S3_ACCESS_KEY") as info:
            store.write_text("s3://bucket/k.txt", "x")
        assert "super-secret-do-not-print" not in str(info.value)
        with pytest.raises(StoreAuthError):
            store.read_bytes("s3://bucket/k.txt")
    finally:
        server.shutdown()


class _FlakyProxy:
    """A loopback TCP proxy that drops the first ``drops`` connections, then forwards."""

    def __init__(self, target: str, drops: int) -> None:
        host, port = target.split(":")
        self.target = (host, int(port))
        self.drops = drops
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.drops:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def test_transient_network_errors_are_retried(
    s3_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write_text(store.join(s3_server, "r.txt"), "survives")
    proxy = _FlakyProxy(os.environ["SRS_S3_ENDPOINT"], drops=2)
    try:
        monkeypatch.setenv("SRS_S3_ENDPOINT", f"127.0.0.1:{proxy.port}")
        monkeypatch.setenv("SRS_S3_RETRIES", "4")
        assert store.read_text(store.join(s3_server, "r.txt")) == "survives"
        assert proxy.accepted >= 3
    finally:
        proxy.close()


def test_unreachable_endpoint_fails_after_bounded_retries(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        dead_port = probe.getsockname()[1]
    monkeypatch.setenv("SRS_S3_ENDPOINT", f"127.0.0.1:{dead_port}")
    monkeypatch.setenv("SRS_S3_RETRIES", "1")
    with pytest.raises(StoreError, match="cannot reach"):
        store.read_bytes("s3://bucket/key")


@pytest.mark.parametrize("key", ["a/../b.txt", "../b.txt", "a/./b.txt", "a/.."])
def test_s3_keys_with_dot_segments_are_a_clear_error(s3_server: str, key: str) -> None:
    """minio refuses '.'/'..' key segments with a bare ValueError; the store names the URI."""
    uri = f"{s3_server}/{key}"
    actions = {
        "write": lambda: store.write_bytes(uri, b"x"),
        "read": lambda: store.read_bytes(uri),
        "stat": lambda: store.size(uri),
        "exists": lambda: store.exists(uri),
        "delete": lambda: store.delete(uri),
        "list": lambda: list(store.list_objects(uri)),
    }
    for action, call in actions.items():
        with pytest.raises(StoreError) as caught:
            call()
        message = str(caught.value)
        assert uri in message and "'.' or '..'" in message and "\n" not in message, (
            action, message)


@pytest.mark.parametrize("uri", ["s3://bucket", "s3://bucket/", "s3://bucket/dir/"])
def test_s3_object_uri_needs_a_key(s3_env: str, uri: str) -> None:
    """An object (not a prefix) needs a key; without one no request is sent."""
    for call in (lambda: store.write_bytes(uri, b"x"), lambda: store.read_bytes(uri),
                 lambda: store.size(uri)):
        with pytest.raises(StoreError, match="needs an object key") as caught:
            call()
        assert uri in str(caught.value)
    with pytest.raises(StoreError, match="needs an object key"):
        store.check_object_uri(uri)
    store.check_object_uri("s3://bucket/dir/file.jsonl")


def test_sentiment_output_at_a_bare_bucket_is_refused_early(s3_server: str,
                                                            tmp_path: Path) -> None:
    """``--out s3://bucket`` used to fail later, saying bucket ``bucket.chunks`` is missing."""
    from srs_core.sentiment.run import run_sentiment

    with pytest.raises(StoreError, match="needs an object key") as caught:
        run_sentiment(str(tmp_path / "release_train.json"), s3_server, workers=1)
    assert ".chunks" not in str(caught.value) and s3_server in str(caught.value)
    assert list(store.list_objects(s3_server)) == []
