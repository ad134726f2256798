"""The compiled pipeline (real `kfp.compiler`), `srs pipeline compile|params|submit`, and the
end-to-end `srs pipeline run --local` on demo data (slow)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from components._image import BASE_IMAGE, GPU_IMAGE
from pipelines.platform import GPU_NODE_LABEL, GPU_RESOURCE, STORE_SECRET
from srs_core.cli import main
from srs_core.errors import ConfigError, JobError
from srs_core.metrics import METRIC_NAMES

# Values that must never reach a compiled pipeline or a submission, whatever the environment.
FAKE_SECRETS = {
    "SRS_S3_ENDPOINT": "minio.fake-cluster.example:9443",
    "SRS_S3_ACCESS_KEY": "AKIAFAKEACCESS7Q2Z",
    "SRS_S3_SECRET_KEY": "fake-secret-5d1c9e0b77aa",
    "SRS_S3_SECURE": "true",
}
FUNCTIONS = {"validate", "prepare_sentiment", "train_emotion_teacher", "cluster_anchors",
             "train_srs", "evaluate", "build_index", "no_index", "deploy_model"}


@pytest.fixture()
def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in FAKE_SECRETS.items():
        monkeypatch.setenv(name, value)
    return FAKE_SECRETS


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, str]:
    """(pipeline spec, platform spec, YAML text) of `srs pipeline compile`, compiled once with
    fake credentials in the environment."""
    path = tmp_path_factory.mktemp("compiled") / "srs-pipeline.yaml"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_SECRETS.items():
            patch.setenv(name, value)
        assert main(["pipeline", "compile", "--out", str(path)]) == 0
    text = path.read_text()
    spec, platform = yaml.safe_load_all(text)
    return spec, platform, text


def _tasks(spec: dict) -> dict[str, dict]:
    """Every container task of the pipeline, nested condition branches included."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {name: task for dag in dags for name, task in dag["tasks"].items()
            if "executorLabel" in spec["components"][task["componentRef"]["name"]]}


def _executor_label(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def _function(spec: dict, label: str) -> str:
    """The Python function an executor runs (KFP embeds its source)."""
    container = spec["deploymentSpec"]["executors"][label]["container"]
    return container["args"][container["args"].index("--function_to_execute") + 1]


def test_compiled_pipeline_loads_back_with_the_six_components(compiled) -> None:
    from kfp import components

    spec, _, text = compiled
    assert spec["pipelineInfo"]["name"] == "srs-perceive-before-respond"
    executors = spec["deploymentSpec"]["executors"]
    assert {_function(spec, label) for label in executors} == FUNCTIONS
    # train_srs runs three times, one per training backend (a PyTorchJob, a TrainJob, or torchrun
    # in the step)
    # in-step); build_index or its no-op, and deploy_model (tests/test_pipeline_library.py)
    assert len(executors) == 11
    loaded = components.load_component_from_text(text)
    assert loaded.name == "srs-perceive-before-respond"
    assert {"stickerchat_uri", "ser30k_uri", "output_root", "anchors_k", "epochs", "batch_size",
            "train_nodes", "gpus_per_node", "training_backend", "job_image",
            "preset", "job_queue", "job_priority_class", "pending_timeout_minutes",
            "job_owner"} <= set(loaded.component_spec.inputs)


def test_dag_follows_the_design_diagram(compiled) -> None:
    spec, _, _ = compiled
    tasks = _tasks(spec)
    by_function = {}
    for name, task in tasks.items():
        by_function.setdefault(_function(spec, _executor_label(spec, task)), []).append(name)

    def upstream(function: str) -> set[str]:
        found = set()
        for name in by_function[function]:
            found |= set(tasks[name].get("dependentTasks", []))
        return found

    assert upstream("validate") == set()
    assert upstream("prepare_sentiment") == {"validate"}
    assert upstream("train_emotion_teacher") == {"validate"}
    assert upstream("cluster_anchors") == {"train-emotion-teacher", "validate"}
    # the training branches run inside the backend condition; their inputs come from the DAG
    root = spec["root"]["dag"]["tasks"]
    branches = root["condition-branches-1"]
    assert set(branches["dependentTasks"]) == {
        "cluster-anchors", "prepare-sentiment", "train-emotion-teacher", "validate"}
    # ... and the library index's branches (build_index=true or false)
    assert set(root["evaluate"]["dependentTasks"]) == {
        "condition-branches-1", "condition-branches-5", "validate"}


def _gpu_settings(spec: dict, platform: dict, label: str) -> tuple[dict, dict]:
    resources = spec["deploymentSpec"]["executors"][label]["container"]["resources"]
    settings = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][label]
    return resources, settings


def test_gpu_settings_on_teacher_anchors_in_step_training_and_evaluation(compiled) -> None:
    spec, platform, _ = compiled
    labels = {task["componentRef"]["name"]: _executor_label(spec, task)
              for task in _tasks(spec).values()}
    gpu_labels = {labels[c] for c in ("comp-train-emotion-teacher", "comp-cluster-anchors",
                                      "comp-build-index", "comp-evaluate")}
    in_step = [lab for lab in labels.values() if _function(spec, lab) == "train_srs"
               and "accelerator" in spec["deploymentSpec"]["executors"][lab]["container"][
                   "resources"]]
    assert len(in_step) == 1
    for label in gpu_labels | set(in_step):
        resources, settings = _gpu_settings(spec, platform, label)
        assert resources["accelerator"]["resourceType"] == GPU_RESOURCE
        assert settings["nodeSelector"]["labels"] == {GPU_NODE_LABEL[0]: GPU_NODE_LABEL[1]}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            settings["tolerations"]
    assert _gpu_settings(spec, platform, labels["comp-cluster-anchors"])[0]["accelerator"][
        "resourceCount"] == "1"
    # in-step training takes as many GPUs as the run asks for
    assert "gpus_per_node" in _gpu_settings(spec, platform, in_step[0])[0]["accelerator"][
        "resourceCount"]
    # the PyTorchJob launcher and the CPU steps hold no GPU and may land on any node
    for label, executor in spec["deploymentSpec"]["executors"].items():
        if label in gpu_labels or label in in_step:
            continue
        assert "accelerator" not in executor["container"]["resources"]
        assert "nodeSelector" not in platform["platforms"]["kubernetes"]["deploymentSpec"][
            "executors"][label]


def test_every_task_has_resources_image_secret_and_runs_as_non_root(compiled) -> None:
    spec, platform, _ = compiled
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for label, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        resources = container["resources"]
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest",
                    "resourceMemoryLimit"):
            assert resources.get(key), f"{label} lacks {key}"
        gpu = "accelerator" in resources or _function(spec, label) == "train_srs"
        assert container["image"] == (GPU_IMAGE if gpu else BASE_IMAGE)
        # the image already holds srs_core and kfp: nothing is pip-installed at run time
        assert "pip install" not in json.dumps(container["command"])
        mapped = {(m["secretKey"], m["envVar"], s["secretName"], s.get("optional", False))
                  for s in kubernetes[label]["secretAsEnv"] for m in s["keyToEnv"]}
        assert mapped == {
            ("SRS_S3_ENDPOINT", "SRS_S3_ENDPOINT", STORE_SECRET, False),
            ("SRS_S3_ACCESS_KEY", "SRS_S3_ACCESS_KEY", STORE_SECRET, False),
            ("SRS_S3_SECRET_KEY", "SRS_S3_SECRET_KEY", STORE_SECRET, False),
            ("SRS_S3_SECURE", "SRS_S3_SECURE", STORE_SECRET, True),
        }, label
        assert kubernetes[label]["securityContext"] == {
            "runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}


def test_job_launchers_get_their_namespace_pod_identity_and_the_cluster_job_defaults(
        compiled) -> None:
    from srs_core.launch.spec import ENV_VARIABLES

    spec, platform, _ = compiled
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    launchers = [label for label, executor in spec["deploymentSpec"]["executors"].items()
                 if _function(spec, label) == "train_srs"
                 and "accelerator" not in executor["container"]["resources"]]
    assert len(launchers) == 2  # the PyTorchJob and the TrainJob launcher
    for launcher in launchers:
        settings = executors[launcher]
        # the job goes to the run's own namespace, where the runner's RBAC applies; the pod's
        # own name and uid let job_owner=step make it the job's owner
        assert settings["fieldPathAsEnv"] == [
            {"fieldPath": "metadata.namespace", "name": "SRS_JOB_NAMESPACE"},
            {"fieldPath": "metadata.name", "name": "SRS_POD_NAME"},
            {"fieldPath": "metadata.uid", "name": "SRS_POD_UID"}]
        (defaults,) = settings["configMapAsEnv"]
        assert defaults["configMapName"] == "srs-defaults" and defaults["optional"] is True
        keys = {m["configMapKey"] for m in defaults["keyToEnv"]}
        assert keys <= set(ENV_VARIABLES)  # every key is one the launcher reads
        assert {"SRS_JOB_NODE_SELECTOR", "SRS_JOB_TOLERATIONS", "SRS_JOB_SERVICE_ACCOUNT",
                "SRS_JOB_QUEUE"} <= keys
        # what the run's parameters decide is not overridden by the cluster
        assert not keys & {"SRS_JOB_IMAGE", "SRS_JOB_WORKERS", "SRS_JOB_GPUS_PER_WORKER",
                           "SRS_JOB_NPROC_PER_NODE", "SRS_JOB_NAMESPACE"}
    assert not any("configMapAsEnv" in s for label, s in executors.items()
                   if label not in launchers)


def test_backend_choice_shows_as_named_branches(compiled) -> None:
    spec, _, _ = compiled
    dag = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    assert set(dag) == {"condition-2", "condition-3", "condition-4"}
    names = {t["taskInfo"]["name"] for t in dag.values()}
    assert names == {"on-pytorchjob", "on-trainjob", "in-step"}
    shown = {task["taskInfo"]["name"] for name, comp in spec["components"].items()
             if name.startswith("comp-condition-") for task in comp["dag"]["tasks"].values()}
    assert {"train-srs-pytorchjob", "train-srs-trainjob", "train-srs"} <= shown


def test_retries_and_caching(compiled) -> None:
    spec, _, _ = compiled
    settings = {}
    for task in _tasks(spec).values():
        label = _executor_label(spec, task)
        key = _function(spec, label)
        if key == "train_srs":
            accelerator = "accelerator" in spec["deploymentSpec"]["executors"][label][
                "container"]["resources"]
            key += "_in_step" if accelerator else "_launcher"
        settings[key] = ("retryPolicy" in task,
                         task.get("cachingOptions", {}).get("enableCache", False))
    assert settings == {
        # (retried, cached)
        "validate": (True, True),
        "prepare_sentiment": (True, True),
        "train_emotion_teacher": (True, True),  # a retry resumes from the last epoch
        "cluster_anchors": (True, True),
        "train_srs_launcher": (True, False),  # a retry adopts the running PyTorchJob
        "train_srs_in_step": (True, False),  # resumes from its last checkpoint
        "evaluate": (True, False),  # its checkpoint URI is rewritten by every training run
        "build_index": (True, False),  # so is the index, built from that checkpoint
        "no_index": (False, False),
        "deploy_model": (True, False),  # create-or-update: idempotent
    }


def test_no_credential_value_in_the_compiled_yaml(compiled) -> None:
    _, _, text = compiled
    for name, value in FAKE_SECRETS.items():
        if name != "SRS_S3_SECURE":  # "true" appears legitimately
            assert value not in text, f"{name} leaked into the compiled pipeline"
    assert "SRS_S3_SECRET_KEY" in text  # only the env var *name*, mapped from the Secret


def test_params_are_typed_and_checked() -> None:
    from pipelines.runner import parse_params

    assert parse_params(["epochs=2", "strict_validation=true", "overrides=a.b=1 c.d=2"]) == {
        "epochs": 2, "strict_validation": True, "overrides": "a.b=1 c.d=2"}
    with pytest.raises(ConfigError, match="unknown parameter 'epoch'"):
        parse_params(["epoch=2"])
    with pytest.raises(ConfigError, match="epochs expects int"):
        parse_params(["epochs=two"])
    with pytest.raises(ConfigError, match="training_backend must be one of"):
        parse_params(["training_backend=slurm"])
    with pytest.raises(ConfigError, match="expected name=value"):
        parse_params(["epochs"])
    with pytest.raises(ConfigError, match="deploy must be one of none, render, apply"):
        parse_params(["deploy=yes"])


def test_deploy_needs_the_index() -> None:
    from pipelines.runner import check_parameters, parse_params

    check_parameters(parse_params(["deploy=render"]))  # build_index is on by default
    with pytest.raises(ConfigError, match="deploy=apply serves the sticker index: it needs "
                                          "build_index=true"):
        check_parameters(parse_params(["deploy=apply", "build_index=false"]))


# --- `srs pipeline submit` against a stub KFP API server -------------------------------------


class KfpStub(ThreadingHTTPServer):
    """A STUB of the Kubeflow Pipelines v2beta1 REST API on loopback: it answers the calls that
    `kfp.Client.create_run_from_pipeline_package` makes (healthz, experiments, runs) with
    canned replies and records every request. It checks nothing a real server would."""

    def __init__(self, fail_runs: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.requests: list[dict[str, Any]] = []
        self.experiments: list[dict[str, str]] = []
        self.fail_runs = fail_runs

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _StubHandler(BaseHTTPRequestHandler):
    server: KfpStub

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> dict[str, Any]:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        request = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                   "headers": {k.lower(): v for k, v in self.headers.items()},
                   "body": json.loads(raw) if raw else None}
        self.server.requests.append(request)
        return request

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        request = self._record()
        if request["path"] == "/apis/v2beta1/healthz":
            self._reply(200, {"multi_user": False})
        elif request["path"] == "/apis/v2beta1/experiments":
            self._reply(200, {"experiments": self.server.experiments,
                              "total_size": len(self.server.experiments)})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        request = self._record()
        if request["path"] == "/apis/v2beta1/experiments":
            experiment = {"experiment_id": f"exp-{len(self.server.experiments) + 1}",
                          "display_name": request["body"]["display_name"]}
            self.server.experiments.append(experiment)
            self._reply(200, experiment)
        elif request["path"] == "/apis/v2beta1/runs" and self.server.fail_runs:
            self._reply(500, {"error": "internal error", "code": 13})
        elif request["path"] == "/apis/v2beta1/runs":
            body = request["body"]
            self._reply(200, {"run_id": "run-0001", "experiment_id": body["experiment_id"],
                              "display_name": body["display_name"], "state": "PENDING"})
        else:
            self._reply(404, {"error": "not found"})


@pytest.fixture()
def kfp_stub() -> Iterator[KfpStub]:
    server = KfpStub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_submit_creates_experiment_and_run_with_the_compiled_spec(
    kfp_stub: KfpStub, fake_credentials: dict, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    token = "kfp-token-6b7f0d2e"
    monkeypatch.setenv("SRS_KFP_TOKEN", token)
    code = main(["pipeline", "submit", "--host", kfp_stub.url, "--experiment", "pbr",
                 "--run-name", "nightly", "--service-account", "srs-pipeline-runner",
                 "--param", "epochs=2", "--param", "training_backend=pytorchjob",
                 "--param", "output_root=s3://runs/nightly"])
    assert code == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"run_id": "run-0001", "experiment_id": "exp-1",
                               "url": f"{kfp_stub.url}/#/runs/details/run-0001"}
    assert token not in out + err

    calls = [(r["method"], r["path"]) for r in kfp_stub.requests]
    assert calls == [("GET", "/apis/v2beta1/healthz"), ("GET", "/apis/v2beta1/experiments"),
                     ("POST", "/apis/v2beta1/experiments"), ("POST", "/apis/v2beta1/runs")]
    assert all(r["headers"].get("authorization") == f"Bearer {token}"
               for r in kfp_stub.requests)
    assert '"pbr"' in kfp_stub.requests[1]["query"]["filter"][0]
    run = kfp_stub.requests[-1]["body"]
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    assert run["service_account"] == "srs-pipeline-runner"
    assert run["runtime_config"]["parameters"] == {
        "epochs": 2, "training_backend": "pytorchjob", "output_root": "s3://runs/nightly"}
    spec = run["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "srs-perceive-before-respond"
    executors = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["secretAsEnv"][0]["secretName"] == STORE_SECRET for e in executors.values())
    sent = json.dumps(kfp_stub.requests)
    assert not any(value in sent for name, value in fake_credentials.items()
                   if name != "SRS_S3_SECURE")


def test_submit_reuses_the_experiment_and_a_compiled_package(
    kfp_stub: KfpStub, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    package = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--out", str(package)]) == 0
    kfp_stub.experiments.append({"experiment_id": "exp-7", "display_name": "srs"})
    assert main(["pipeline", "submit", "--host", kfp_stub.url, "--package", str(package),
                 "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["experiment_id"] == "exp-7"
    posts = [r for r in kfp_stub.requests if r["method"] == "POST"]
    assert [r["path"] for r in posts] == ["/apis/v2beta1/runs"]  # no second experiment
    run = posts[0]["body"]
    assert run["experiment_id"] == "exp-7"
    assert run["service_account"] == "srs-pipeline-runner"  # manifests/' runner by default
    assert "authorization" not in posts[0]["headers"]  # no token in the environment
    # --no-cache turns caching off for every task of this run
    tasks = _tasks(run["pipeline_spec"]["pipeline_spec"])
    assert tasks and not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())


def test_submit_failure_is_a_job_error(fake_credentials: dict) -> None:
    from pipelines.runner import submit

    server = KfpStub(fail_runs=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(JobError, match=f"submitting to {server.url} failed") as info:
            submit(server.url, {"epochs": 1})
    finally:
        server.shutdown()
        server.server_close()
    assert not any(v in str(info.value) for v in fake_credentials.values() if v != "true")


# --- `srs pipeline run --local` --------------------------------------------------------------


def test_local_run_needs_both_data_roots(tmp_path: Path) -> None:
    from pipelines.runner import run_locally

    (tmp_path / "stickerchat").mkdir()
    with pytest.raises(ConfigError, match="ser30k does not exist.*srs data synth"):
        run_locally(tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match="training_backend=local"):
        (tmp_path / "ser30k").mkdir()
        run_locally(tmp_path, tmp_path / "out", {"training_backend": "pytorchjob"})


def test_local_run_fails_at_validation_of_unusable_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    """Empty data roots: the first step fails the run, nothing else starts."""
    for part in ("stickerchat", "ser30k"):
        (tmp_path / "data" / part).mkdir(parents=True)
    code = main(["pipeline", "run", "--local", "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out")])
    assert code == 1  # a failed run (2 is for usage and configuration errors)
    assert "local pipeline run failed" in caplog.text and "validate" in caplog.text
    assert capsys.readouterr().out == ""  # no metrics
    assert not (tmp_path / "out" / "sentiment").exists()
    # retries were dropped for the local run only (it failed at once, not after backoffs)
    from pipelines.pipeline import srs_pipeline

    assert srs_pipeline.pipeline_spec.root.dag.tasks["validate"].retry_policy.max_retry_count == 3


# --- end to end: `srs pipeline run --local` on demo data --------------------------------------


def _executor_outputs(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text())
            for p in run_dir.glob("*/executor_output.json")}


def _artifact(outputs: dict, task: str, name: str) -> dict:
    return outputs[task]["artifacts"][name]["artifacts"][0]


def _check_library_and_deploy(out: Path, outputs: dict, logged: dict) -> None:
    """build_index (on by default) and deploy=render in the end-to-end run (the steps' own
    tests: tests/test_pipeline_library.py, tests/test_deploy.py)."""
    from srs_core.deploy.manifest import CRD_PATH
    from srs_core.launch.schema import validate_object

    index = json.loads((out / "index" / "index.json").read_text())
    assert _artifact(outputs, "build-index", "summary")["metadata"]["stickers"] == \
        index["stickers"] == logged["library_stickers"]
    for method in ("ita", "rerank20", "rerank50", "rerank100"):  # the whole library's ranks
        assert 0.0 <= logged[f"library_{method}_R@1"] <= logged[f"library_{method}_R@10"] <= 1
    stored = (out / "serving" / "inferenceservice.yaml").read_text()
    assert Path(_artifact(outputs, "deploy-model", "manifest")["uri"]).read_text() == stored
    isvc = yaml.safe_load(stored)
    validate_object(isvc, CRD_PATH, "v1beta1")
    env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert (env["SRS_CHECKPOINT"], env["SRS_INDEX"]) == (str(out / "srs" / "best.pt"),
                                                         str(out / "index"))


@pytest.mark.slow
def test_local_run_end_to_end_on_demo_data(tmp_path: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """All six steps under kfp.local (subprocesses, torchrun on CPU) with the tiny preset,
    tracked as the demo is: the run's own MLflow store, the model registered there."""
    import numpy as np

    monkeypatch.delenv("SRS_TRACKING", raising=False)

    from srs_core.data.ser30k import EMOTIONS
    from srs_core.data.synth import synthesize

    data, out = tmp_path / "data", tmp_path / "run"
    synthesize(str(data), seed=1, dialogs=48, sets=6, images=56, image_size=32)
    code = main(["pipeline", "run", "--local", "--data", str(data), "--out", str(out),
                 "--param", "epochs=1", "--param", "anchors_k=2", "--param", "batch_size=8",
                 "--param", "overrides=emotion.epochs=1 train.log_every=1",
                 "--param", "deploy=render"])
    assert code == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)  # the step logs go to stderr
    assert "evaluate/report: " in captured.err and "train-srs-3/report: " in captured.err
    paper_names = [f"paper_{name}" for name in METRIC_NAMES]
    assert list(metrics) == [*METRIC_NAMES, *paper_names]  # ours, then the authors' protocol
    assert all(0.0 <= metrics[name] <= 1.0 for name in metrics)
    assert metrics["R10@1"] <= metrics["R10@2"] <= metrics["R10@5"]

    # step outputs, under the run root
    assert len((out / "sentiment" / "train.jsonl").read_text(encoding="utf-8").splitlines()) == 48
    assert (out / "teacher" / "teacher.pth").is_file()
    assert np.load(out / "anchors" / "anchors-k2.npy").shape == (7 * 2, 2048)
    assert (out / "srs" / "best.pt").is_file()
    evaluated = json.loads((out / "evaluate" / "test" / "metrics.json").read_text())
    assert {k: evaluated["metrics"][k] for k in METRIC_NAMES} == {
        k: metrics[k] for k in METRIC_NAMES}
    assert {f"paper_{k}": evaluated["paper"]["metrics"][k] for k in METRIC_NAMES} == {
        k: metrics[k] for k in paper_names}

    # the KFP artifacts the UI shows
    (run_dir,) = [p for p in (out / "kfp").iterdir() if p.is_dir()]
    outputs = _executor_outputs(run_dir)
    logged = _artifact(outputs, "evaluate", "metrics")["metadata"]
    assert {k: v for k, v in logged.items() if not k.startswith("library_")} == metrics
    _check_library_and_deploy(out, outputs, logged)
    confusion = _artifact(outputs, "train-emotion-teacher", "confusion")["metadata"][
        "confusionMatrix"]
    assert [s["displayName"] for s in confusion["annotationSpecs"]] == list(EMOTIONS)
    assert len(confusion["rows"]) == 7 and all(len(r["row"]) == 7 for r in confusion["rows"])
    assert set(_artifact(outputs, "train-emotion-teacher", "scores")["metadata"]) == {
        "val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1"}
    validation = Path(_artifact(outputs, "validate", "report")["uri"]).read_text()
    assert "result: OK" in validation
    training = Path(_artifact(outputs, "train-srs-3", "report")["uri"]).read_text()
    assert 'src="data:image/png;base64,' in training  # the loss curves
    evaluation = Path(_artifact(outputs, "evaluate", "report")["uri"]).read_text()
    assert evaluation.count('class="dialog"') == 3 and "R10@1" in evaluation
    _check_local_tracking(out, metrics)


def _check_local_tracking(out: Path, metrics: dict) -> None:
    """The steps' runs in ``<out>/mlflow.db`` under one finished pipeline run, and the
    evaluated model as version 1 of ``srs-selector`` with its checkpoint."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("srs").experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("srs.role") == "pipeline"]
    assert parent.info.status == "FINISHED"
    steps = {run.info.run_name: run for run in runs
             if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"train", "evaluate-test"} <= set(steps), sorted(steps)
    assert steps["evaluate-test"].data.metrics["R10_at_1"] == pytest.approx(metrics["R10@1"])
    assert "loss" in steps["train"].data.metrics
    version = client.get_model_version("srs-selector", "1")
    assert version.tags["srs.checkpoint"] == str(out / "srs" / "best.pt")
