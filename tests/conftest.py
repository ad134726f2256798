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
