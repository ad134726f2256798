"""The built CPU image runs the compiled pipeline's own component commands, as a pod would.

Each step is the ``command``/``args`` of its executor in the YAML that ``srs pipeline compile``
writes, given an executor input the way KFP's launcher builds it (output parameters under
``/tmp/kfp/outputs``, the executor output at ``/tmp/kfp_outputs/output_metadata.json``,
artifacts as ``minio://`` URIs that the KFP SDK maps to ``/minio/...``). The container runs as
uid 1000 on a read-only root filesystem: writable are only the emptyDirs KFP's executor pods
mount (``/gcs /minio /s3 /.local /.cache /.config``), ``/tmp`` (where the launcher's files
live) and the training pods' ``/home/srs`` and ``/cache`` (manifests/). The data and every step
output are ``s3://`` objects on the loopback S3 server; credentials come from env as the
pipeline's Secret injects them; nothing else is reachable and nothing is installed at run time.

Needs root, buildah and the image (``images/ci-smoke.sh`` builds it and runs this file);
otherwise skipped. The GPU steps run in the CPU image: their code is the same, the CUDA image
cannot run without a GPU.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import yaml
from image_runner import USER, Container, missing

from components._image import BASE_IMAGE

IMAGE = os.environ.get("SRS_SMOKE_IMAGE", BASE_IMAGE)
EXECUTOR_OUTPUT = "/tmp/kfp_outputs/output_metadata.json"
ARTIFACT_ROOT = "minio://mlpipeline/v2/artifacts/srs-smoke"
TINY = "emotion.epochs=1 train.log_every=1 emotion.kmeans_backend=cpu"


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(missing(IMAGE) is not None, reason=str(missing(IMAGE)))]


@pytest.fixture(scope="module")
def container() -> Container:
    box = Container(IMAGE)
    yield box
    box.remove()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pipelines.runner import compile_pipeline

    path = compile_pipeline(tmp_path_factory.mktemp("compiled") / "srs-pipeline.yaml")
    return next(yaml.safe_load_all(path.read_text()))


def executor_input(component: dict, task: str, values: dict) -> dict:
    """What KFP's driver gives a task: its parameters (defaults filled in) and where to write."""
    inputs = component.get("inputDefinitions", {}).get("parameters", {})
    parameters = {name: spec["defaultValue"] for name, spec in inputs.items()
                  if "defaultValue" in spec}
    parameters.update(values)
    assert set(parameters) == set(inputs), f"{task}: inputs {sorted(inputs)}"
    outputs = component.get("outputDefinitions", {})
    return {
        "inputs": {"parameterValues": parameters},
        "outputs": {
            "parameters": {name: {"outputFile": f"/tmp/kfp/outputs/{name}"}
                           for name in outputs.get("parameters", {})},
            "artifacts": {name: {"artifacts": [{
                "name": name, "type": {"schemaTitle": spec["artifactType"]["schemaTitle"]},
                "uri": f"{ARTIFACT_ROOT}/{task}/{name}", "metadata": {}}]}
                for name, spec in outputs.get("artifacts", {}).items()},
            "outputFile": EXECUTOR_OUTPUT,
        },
    }


@pytest.fixture(scope="module")
def bucket(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo data uploaded to a fresh bucket; the env a step pod gets from the Secret."""
    from minio import Minio

    from srs_core.data.synth import synthesize

    env = {"SRS_S3_ENDPOINT": moto_endpoint, "SRS_S3_ACCESS_KEY": "testing-access",
           "SRS_S3_SECRET_KEY": "testing-secret-value", "SRS_S3_SECURE": "false"}
    name = f"smoke-{uuid.uuid4().hex[:10]}"
    client = Minio(moto_endpoint, access_key=env["SRS_S3_ACCESS_KEY"],
                   secret_key=env["SRS_S3_SECRET_KEY"], secure=False)
    client.make_bucket(name)
    data = tmp_path_factory.mktemp("data")
    synthesize(str(data), seed=1, dialogs=48, sets=6, images=56, image_size=32)
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        client.fput_object(name, f"data/{path.relative_to(data).as_posix()}", str(path))
    return {"name": name, "client": client, "env": env, "root": f"s3://{name}"}


class Steps:
    """Runs the compiled executors one after another, keeping each step's executor output."""

    def __init__(self, compiled: dict, container: Container, bucket: dict, scratch: Path):
        self.compiled, self.container, self.bucket = compiled, container, bucket
        self.scratch = scratch
        self.outputs: dict[str, dict] = {}

    def run(self, task: str, values: dict) -> dict:
        executor = self.compiled["deploymentSpec"]["executors"][f"exec-{task}"]["container"]
        component = self.compiled["components"][f"comp-{task}"]
        payload = json.dumps(executor_input(component, task, values))
        args = [payload if arg == "{{$}}" else arg for arg in executor["args"]]
        assert "pip install" not in " ".join(executor["command"])  # no network at run time
        scratch = self.scratch / task
        result = self.container.run([*executor["command"], *args], self.bucket["env"], scratch)
        assert result.returncode == 0, f"{task} failed:\n{result.stdout[-4000:]}\n" \
                                       f"{result.stderr[-8000:]}"
        output = json.loads((scratch / "tmp" / EXECUTOR_OUTPUT[len("/tmp/"):]).read_text())
        self.outputs[task] = output
        return output

    def artifact(self, task: str, name: str) -> Path:
        """The local file the step wrote for an artifact (what the launcher would upload)."""
        uri = self.outputs[task]["artifacts"][name]["artifacts"][0]["uri"]
        return self.scratch / task / "minio" / uri.removeprefix("minio://")

    def objects(self, prefix: str) -> set[str]:
        return {o.object_name for o in self.bucket["client"].list_objects(
            self.bucket["name"], prefix=prefix, recursive=True)}


def test_the_image_is_non_root_with_a_read_only_root(container: Container,
                                                     tmp_path: Path) -> None:
    assert container.user == USER
    probe = "id -u; touch /opt/venv/x 2>&1 || true; touch /tmp/x /home/srs/x && echo writable"
    result = container.run(["sh", "-c", probe], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "1000"
    assert "Read-only file system" in lines[1]
    assert lines[-1] == "writable"


def test_compiled_components_run_in_the_image_against_s3(
    compiled: dict, container: Container, bucket: dict, tmp_path: Path
) -> None:
    steps = Steps(compiled, container, bucket, tmp_path)
    root, out = bucket["root"], f"{bucket['root']}/run"
    config = {"output_root": out, "preset": "tiny", "overrides": TINY}

    validated = steps.run("validate", {
        "stickerchat": f"{root}/data/stickerchat", "ser30k": f"{root}/data/ser30k",
        "strict": True, "preset": "tiny", "overrides": TINY, "anchors_k": 2, "epochs": 1,
        "batch_size": 8, "train_nodes": 1, "gpus_per_node": 1})
    counts = validated["artifacts"]["counts"]["artifacts"][0]["metadata"]
    assert counts["usable_dialogs_train"] == 48 and counts["usable_images_train"] == 56
    assert "result: OK (strict)" in steps.artifact("validate", "report").read_text()
    stickerchat = validated["parameterValues"]["stickerchat"]
    ser30k = validated["parameterValues"]["ser30k"]

    sentiment = steps.run("prepare-sentiment", {
        "stickerchat": stickerchat, "output_root": out, "workers": 2})["parameterValues"]
    assert sentiment["Output"] == f"{out}/sentiment"
    assert "run/sentiment/train.jsonl" in steps.objects("run/sentiment/")

    teacher = steps.run("train-emotion-teacher", {"ser30k": ser30k, **config})
    assert teacher["parameterValues"]["teacher"] == f"{out}/teacher/teacher.pth"
    scores = teacher["artifacts"]["scores"]["artifacts"][0]["metadata"]
    assert set(scores) == {"val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1"}
    assert "run/teacher/teacher.pth" in steps.objects("run/teacher/")

    anchors = steps.run("cluster-anchors", {
        "ser30k": ser30k, "teacher": teacher["parameterValues"]["teacher"], "k": 2,
        **config})["parameterValues"]["Output"]
    assert anchors.startswith(f"{out}/anchors/") and anchors.endswith(".npy")
    assert anchors.removeprefix(f"{root}/") in steps.objects("run/anchors/")

    trained = steps.run("train-srs-3", {
        "stickerchat": stickerchat, "sentiment": sentiment["Output"],
        "teacher": teacher["parameterValues"]["teacher"], "anchors": anchors, **config,
        "epochs": 1, "batch_size": 8, "backend": "local", "nodes": 1, "gpus_per_node": 1,
        "job_image": "unused", "job_cleanup": "always", "timeout_hours": 1.0,
        "store_secret": "srs-minio", "run_id": "smoke"})["parameterValues"]
    assert trained["checkpoint"] == f"{out}/srs/best.pt"
    assert "run/srs/best.pt" in steps.objects("run/srs/")
    assert "<html" in steps.artifact("train-srs-3", "report").read_text().lower()

    evaluated = steps.run("evaluate", {
        "stickerchat": stickerchat, "checkpoint": trained["checkpoint"],
        "train_output": trained["output"], "split": "test", **config})
    metrics = evaluated["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert {"R10@1", "R10@2", "R10@5", "MRR", "paper_R10@1"} <= set(metrics)
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert metrics["R10@1"] <= metrics["R10@2"] <= metrics["R10@5"]
    assert {"run/evaluate/test/metrics.json", "run/evaluate/test/scores.jsonl"} <= \
        steps.objects("run/evaluate/test/")
