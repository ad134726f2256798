"""The KServe predictor as a real HTTP server on loopback: readiness, requests, batching of
concurrent requests, 4xx for bad input, shutdown on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from library_setup import tiny_library

from srs_core.serving import BadRequest, parse_instances

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _call(url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    lib = tiny_library(tmp_path_factory.getbasetemp() / "tiny-library")
    port = _free_port()
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "srs_core.cli", "serve", "--checkpoint", lib.checkpoint,
         "--index", lib.index, "--port", str(port), "--host", "127.0.0.1",
         "--batch-wait-ms", "20"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        try:
            status, body = _call(f"{base}/v1/models/srs", timeout=2)
            if status == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet: it listens only after loading
        time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("the server never became ready")
    yield base, process
    if process.poll() is None:
        process.kill()
        process.wait()


def _predict(base: str, payload) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return _call(f"{base}/v1/models/srs:predict", body)


def test_ready_and_suggests(server) -> None:
    base, _ = server
    assert _call(f"{base}/v1/models/srs") == (200, {"name": "srs", "ready": True})
    status, body = _predict(base, {"instances": [
        {"utterances": ["今天 真 开心"], "k": 3},
        {"utterances": ["好 难过", "唉"], "k": 2, "per_set": 1},
    ]})
    assert status == 200
    first, second = body["predictions"]
    assert len(first["suggestions"]) == 3 and len(second["suggestions"]) == 2
    assert {"set_id", "sticker_id", "itm", "ita", "emotion"} <= set(first["suggestions"][0])
    assert first["polarity"]["label"] in ("positive", "negative", "neutral")


def test_concurrent_requests_are_answered(server) -> None:
    base, _ = server
    payloads = [{"instances": [{"utterances": [f"第 {i} 句 话"], "k": 2}]} for i in range(12)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda p: _predict(base, p), payloads))
    assert all(status == 200 for status, _ in answers)
    assert all(len(body["predictions"]) == 1 for _, body in answers)


@pytest.mark.parametrize(("payload", "status", "words"), [
    (b"not json", 400, "request format"),  # KServe decodes a JSON-typed body itself
    ({"rows": []}, 400, "instances"),
    ({"instances": [{"utterances": []}]}, 400, "utterances"),
    ({"instances": [{"utterances": ["  "]}]}, 400, "empty"),
    ({"instances": [{"utterances": ["hi"], "k": 0}]}, 400, "k must be between"),
    ({"instances": [{"utterances": ["hi"], "color": 1}]}, 400, "unknown field"),
    ({"instances": [{"utterances": ["hi"]}] * 65}, 413, "at most 64"),
    ({"instances": [{"utterances": ["x" * 3000]}]}, 413, "characters"),
    # set ids the index does not hold: a 400 naming them, not 200 with no suggestion
    ({"instances": [{"utterances": ["hi"], "sets": [987654321]}]}, 400, "987654321"),
    ({"instances": [{"utterances": ["hi"]}, {"utterances": ["hi"], "sets": [-3, -3]}]}, 400,
     "instances[1].sets: unknown set id(s) -3"),
    ({"instances": [{"utterances": ["hi"], "sets": ["7"]}]}, 400, "integer set ids"),
])
def test_bad_requests_get_4xx(server, payload, status, words) -> None:
    base, _ = server
    got, body = _predict(base, payload)
    assert got == status
    assert words in json.dumps(body, ensure_ascii=False)


def test_known_sets_still_answer(server) -> None:
    base, _ = server
    status, body = _predict(base, {"instances": [{"utterances": ["好 的"], "k": 2}]})
    known = body["predictions"][0]["suggestions"][0]["set_id"]
    status, body = _predict(base, {"instances": [{"utterances": ["好 的"], "k": 2,
                                                  "sets": [known]}]})
    assert status == 200
    assert {s["set_id"] for s in body["predictions"][0]["suggestions"]} == {known}


def test_parse_instances_refuses_unknown_sets() -> None:
    payload = {"instances": [{"utterances": ["a"], "sets": [1, 5, -2]}]}
    with pytest.raises(BadRequest, match=r"unknown set id\(s\) 5, -2"):
        parse_instances(payload, known_sets=frozenset({1, 2}))
    [query] = parse_instances(payload)  # without an index to check against
    assert query.sets == (1, 5, -2)


def test_parse_instances_defaults() -> None:
    [query] = parse_instances({"instances": [{"utterances": ["a"], "k": 7}]})
    assert (query.k, query.n, query.sets, query.per_set) == (7, 50, (), 0)
    with pytest.raises(BadRequest):
        parse_instances({"instances": [{"utterances": ["a"], "n": 2, "k": 5}]})


def test_sigterm_shuts_down(server) -> None:
    _, process = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) is not None
