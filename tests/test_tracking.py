"""MLflow tracking against a real `mlflow server` on loopback (SQLite + the moto S3 server):
`srs train` and `srs evaluate` log params, metric histories, artifacts and tags; names; a
pipeline's parent run with nested steps; an unreachable server is one warning, not a failure."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest
from conftest import mlflow_client

from srs_core import tracking
from srs_core.cli import main
from srs_core.config import load_config
from srs_core.data.synth import synthesize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    synthesize(out, seed=5, dialogs=48, sets=8, images=40)
    return out



def test_metric_names_have_one_rule() -> None:
    assert tracking.metric_name("R10@1") == "R10_at_1"
    assert tracking.metric_name("paper_R10@1") == "paper_R10_at_1"
    assert tracking.metric_name("library_rerank@50_R@10") == "library_rerank_at_50_R_at_10"
    assert tracking.metric_name("MAP") == "MAP"
    assert tracking.numeric_metrics({"val": {"R10@1": 1, "MAP": 0.5}, "step": 3, "ok": True}) \
        == {"val_R10_at_1": 1.0, "val_MAP": 0.5, "step": 3.0}
    assert tracking.params_of({"train": {"lr": 0.1}, "loss": {"emotion": False}}) == {
        "train.lr": "0.1", "loss.emotion": "False"}


def test_where_runs_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking.tracking_uri(str(tmp_path)) == ""  # SRS_TRACKING=off (tests' default)
    monkeypatch.delenv("SRS_TRACKING")
    assert tracking.tracking_uri(str(tmp_path)) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.tracking_uri("s3://bucket/run") == ""  # no local default for a remote root
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.tracking_uri(str(tmp_path)) == "http://mlflow:5000"


def test_train_and_evaluate_log_to_a_real_server(server, demo, emotion, tmp_path) -> None:
    teacher, anchors = emotion
    overrides = [f"data.stickerchat={demo / 'stickerchat'}", f"train.output={tmp_path / 'srs'}",
                 "train.batch_size=4", "train.log_every=1", "train.max_steps=2",
                 "eval.batch_size=8", f"emotion.teacher={teacher}", f"emotion.anchors={anchors}"]
    assert main(["train", "--preset", "tiny", *overrides]) == 0
    best = str(tmp_path / "srs" / "best.pt")
    assert main(["evaluate", "--preset", "tiny", "--checkpoint", best, "--split", "test",
                 "--out", str(tmp_path / "eval"), *overrides]) == 0

    client = mlflow_client(server)
    experiment = client.get_experiment_by_name("srs")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])
            if run.data.tags.get("srs.checkpoint") == best}
    train, evaluation = runs["train"], runs["evaluate-test"]
    assert train.info.status == evaluation.info.status == "FINISHED"
    assert train.data.params["train.batch_size"] == "4"
    assert train.data.params["loss.emotion"] == "True"
    losses = client.get_metric_history(train.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2]
    for name in ("lr", "dialogs_per_s", "ita", "itm", "emotion", "val_MAP", "val_R10_at_1",
                 "summary_steps"):
        assert name in train.data.metrics, name
    assert train.data.tags["srs.data.stickerchat"] == str(demo / "stickerchat")
    assert train.data.tags["mlflow.source.git.commit"]
    names = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert {"history.jsonl", "train_summary.json"} <= names
    for name in ("R10_at_1", "MAP", "paper_R10_at_1", "paper_MAP"):
        assert name in evaluation.data.metrics, name
    assert evaluation.data.tags["srs.split"] == "test"
    assert "metrics.json" in {a.path for a in client.list_artifacts(evaluation.info.run_id)}


def test_pipeline_steps_nest_under_one_parent(server, tmp_path) -> None:
    with tracking.step_run("train", str(tmp_path), "kfp-run-1") as first:
        assert tracking.active() is first and tracking.job_env()["SRS_TRACKING_RUN_ID"]
        inner = tracking.start_run("srs-train", str(tmp_path))  # what `srs train` does inside
        assert inner.run_id == first.run_id and not inner.owned
    with tracking.step_run("evaluate-test", str(tmp_path), "kfp-run-1") as second:
        pass
    tracking.end_pipeline_run("kfp-run-1", str(tmp_path))
    client = mlflow_client(server)
    parent = client.get_run(first.run_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(second.run_id).data.tags["mlflow.parentRunId"] == parent
    top = client.get_run(parent)
    assert top.data.tags["srs.kfp_run_id"] == "kfp-run-1" and top.info.status == "FINISHED"
    assert client.get_run(first.run_id).data.tags["srs.step"] == "train"


def test_unreachable_server_is_one_warning_and_the_run_goes_on(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("SRS_TRACKING")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    tracking.session._warned.clear()

    def fake_train(cfg):
        for step in range(1, 4):
            tracking.log_record({"step": step, "loss": 1.0 / step, "val": {"R10@1": 0.1}})
        return {"steps": 3, "rank": 0}

    cfg = load_config(preset="tiny", overrides=[f"train.output={tmp_path / 'srs'}"])
    started = time.time()
    with caplog.at_level(logging.WARNING, logger="srs_core.tracking"):
        assert tracking.track_training(cfg, fake_train)["steps"] == 3
    assert time.time() - started < 30
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and r.name.startswith("srs_core")]  # (urllib3 also logs its one retry)
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0].getMessage()


def test_steps_starting_together_share_one_pipeline_run(server, tmp_path) -> None:
    """A study's variants start their first tracked steps at once: one parent survives."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        parents = set(pool.map(lambda _: tracking.pipeline_parent("kfp-race", str(tmp_path)),
                               range(4)))
    client = mlflow_client(server)
    experiment = client.get_experiment_by_name("srs").experiment_id
    active = client.search_runs([experiment], "tags.`srs.kfp_run_id` = 'kfp-race'")
    assert len(parents) == 1 and [run.info.run_id for run in active] == list(parents)
