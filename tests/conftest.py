"""Shared fixtures: a real S3-protocol server (moto) on loopback, started by the test session,
and a random emotion teacher with anchors for the training tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from srs_core.runtime.checkpoint import save_torch
from srs_core.store.s3_config import ENV_KEYS as S3_ENV


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a moto S3 server running in a thread for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture()
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the store at the loopback server; returns the endpoint."""
    monkeypatch.setenv("SRS_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("SRS_S3_ACCESS_KEY", "testing-access")
    monkeypatch.setenv("SRS_S3_SECRET_KEY", "testing-secret-value")
    monkeypatch.setenv("SRS_S3_SECURE", "false")
    monkeypatch.setenv("SRS_S3_RETRIES", "2")
    return moto_endpoint


@pytest.fixture()
def s3_server(s3_env: str) -> str:
    """A fresh, empty bucket on the loopback S3 server, as ``s3://<bucket>``."""
    from srs_core.store.s3_client import client

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client().make_bucket(bucket)
    return f"s3://{bucket}"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SRS_CACHE_DIR", str(tmp_path_factory.mktemp("srs-cache")))
    for name in S3_ENV:
        if name in os.environ and not os.environ.get("SRS_TEST_KEEP_S3_ENV"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def emotion(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A random teacher in the saved format and random anchors (K = 2)."""
    import timm

    out = tmp_path_factory.mktemp("emotion")
    torch.manual_seed(0)
    backbone = timm.create_model("resnet50", num_classes=0, pretrained=False)
    save_torch(backbone.state_dict(), str(out / "teacher.pth"))
    np.save(out / "anchors.npy", np.random.default_rng(0).normal(size=(14, 2048)).astype("f4"))
    return str(out / "teacher.pth"), str(out / "anchors.npy")


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests track nothing unless they ask (tests/test_tracking.py): no MLflow store is made."""
    monkeypatch.setenv("SRS_TRACKING", "off")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SRS_TRACKING_RUN_ID",
                 "SRS_TRACKING_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def mlflow_server(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on loopback: SQLite backend, artifacts on the moto S3 server."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import boto3

    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": f"http://{moto_endpoint}"}
    boto3.client("s3", endpoint_url=keys["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(
        Bucket="mlflow-artifacts")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{db}", "--workers", "1",
         "--artifacts-destination", "s3://mlflow-artifacts/runs"],
        env={**os.environ, **keys}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            break
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode()[-2000:]) from None
            time.sleep(0.5)
    else:
        server.kill()
        raise RuntimeError("mlflow server did not start in 120 s")
    yield url
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture()
def server(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Tracking on, into the session's loopback ``mlflow server``."""
    monkeypatch.delenv("SRS_TRACKING", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def mlflow_client(uri: str):
    """An ``MlflowClient`` to read back what a test tracked."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)
