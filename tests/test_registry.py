"""MLflow's model registry on a real loopback server: a registered version carries its lineage,
an alias only when asked, and `srs deploy --registered-model` serves what was registered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import mlflow_client

from srs_core.cli import main
from srs_core.deploy import label_value, registered_model
from srs_core.errors import ConfigError
from srs_core.tracking import register_model, resolve_registered


def test_version_with_lineage_and_alias_only_when_asked(server) -> None:
    metrics = {"R10@1": 0.5, "paper_MAP": 0.25}
    first = register_model("srs-test", "s3://runs/a/srs/best.pt", "s3://runs/a/index", metrics,
                           {"train": {"lr": 0.001}}, "kfp-a")
    second = register_model("srs-test", "s3://runs/b/srs/best.pt", "s3://runs/b/index",
                            metrics, {}, "kfp-b", alias="champion")
    assert int(second) == int(first) + 1
    client = mlflow_client(server)
    version = client.get_model_version("srs-test", first)
    assert version.tags["srs.checkpoint"] == "s3://runs/a/srs/best.pt"
    assert version.tags["srs.kfp_run_id"] == "kfp-a"
    assert version.tags["metric.R10_at_1"] == "0.5"
    assert "s3://runs/a/srs/best.pt" in version.description
    pointer = client.download_artifacts(version.run_id, "srs-model/srs_model.json")
    lineage = json.loads(Path(pointer).read_text())
    assert lineage["config"] == {"train": {"lr": 0.001}} and lineage["index"].endswith("a/index")
    assert client.get_registered_model("srs-test").aliases == {"champion": second}
    assert resolve_registered("srs-test", alias="champion")["checkpoint"].endswith("b/srs/best.pt")
    with pytest.raises(ConfigError, match="srs-test"):
        resolve_registered("srs-test", version="99")


def test_deploy_from_a_registered_model(server, tmp_path: Path, capsys) -> None:
    version = register_model("SRS Model v1", "s3://runs/c/srs/best.pt", "s3://runs/c/index",
                             {"MAP": 0.3}, {}, "kfp-c", alias="champion")
    checkpoint, index, labels = registered_model("SRS Model v1", alias="champion")
    assert (checkpoint, index) == ("s3://runs/c/srs/best.pt", "s3://runs/c/index")
    assert labels == {"srs-kubeflow/registered-model": "SRS-Model-v1",
                      "srs-kubeflow/model-version": version}
    assert main(["deploy", "--registered-model", "SRS Model v1", "--version", version,
                 "--out", str(tmp_path), "--image", "ghcr.io/srs-kubeflow/srs:0.1.0-cpu"]) == 0
    out = capsys.readouterr().out
    done = json.loads(out[out.index("{"):])
    manifest = yaml.safe_load(Path(done["manifest_uri"]).read_text())  # validated when rendered
    assert manifest["metadata"]["labels"]["srs-kubeflow/model-version"] == version
    env = {e["name"]: e.get("value") for e in
           manifest["spec"]["predictor"]["containers"][0]["env"]}
    assert env["SRS_CHECKPOINT"] == checkpoint and env["SRS_INDEX"] == index


def test_label_values_are_sanitized() -> None:
    assert label_value("my model@prod!") == "my-model-prod"
    assert len(label_value("x" * 100)) == 63
    assert label_value("-a.b_") == "a.b"


def test_registration_is_skipped_not_failed_when_tracking_is_off() -> None:
    assert register_model("srs-off", "/tmp/best.pt", "", {}, {}, "") == ""
