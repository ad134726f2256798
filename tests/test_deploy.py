"""srs_core.deploy: the rendered InferenceService is manifests/serving's object with literal
model values and passes KServe's CRD; create / update / wait for Ready against a loopback stub
of the Kubernetes API (tests/launch_stub.py; no cluster here)."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml
from kubernetes.client import Configuration
from launch_stub import StubApiServer, isvc_status

from components._image import BASE_IMAGE
from srs_core.artifacts import RunOutputs
from srs_core.cli import build_parser
from srs_core.deploy import (
    DEPLOY_MODES,
    DeployError,
    apply_inference_service,
    deploy_model,
    inference_service,
    ready_state,
)
from srs_core.deploy.manifest import CRD_PATH, MODEL_ENV
from srs_core.errors import ConfigError
from srs_core.launch.schema import validate_object
from srs_core.launch.spec import RUN_ID_LABEL

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "manifests" / "serving" / "inferenceservice.yaml"
NS, NAME = "srs", "srs-suggest"
ISVCS = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"
CHECKPOINT, INDEX = "s3://srs-runs/r7/srs/best.pt", "s3://srs-runs/r7/index"


def rendered(checkpoint: str = CHECKPOINT, index: str = INDEX, **options) -> dict:
    return inference_service(NAME, NS, BASE_IMAGE, checkpoint, index, **options)


def hand_applied_with(values: dict[str, str], namespace: str = NS) -> dict:
    """manifests/serving's InferenceService, its two ConfigMap env refs replaced by values."""
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    manifest["metadata"]["namespace"] = namespace  # kustomize's `namespace:` there
    (container,) = manifest["spec"]["predictor"]["containers"]
    replaced = []
    for entry in container["env"]:
        if "configMapKeyRef" in entry.get("valueFrom", {}):
            entry.pop("valueFrom")
            entry["value"] = values[entry["name"]]
            replaced.append(entry["name"])
    assert replaced == list(MODEL_ENV)
    return manifest


# --- the object ------------------------------------------------------------------------------


def test_rendered_is_the_hand_applied_manifest_with_literal_model_values() -> None:
    """One source of truth: a change to either side fails here until the other follows."""
    values = dict(zip(MODEL_ENV, (CHECKPOINT, INDEX), strict=True))
    assert rendered() == hand_applied_with(values)


def test_rendered_validates_against_the_kserve_crd() -> None:
    validate_object(rendered(), CRD_PATH, "v1beta1")  # strict: unknown fields are errors


def test_a_new_checkpoint_changes_the_pod_template_and_serve_reads_it() -> None:
    old, new = rendered(), rendered("s3://srs-runs/r8/srs/best.pt", "s3://srs-runs/r8/index")
    assert old["spec"] != new["spec"]  # a new revision rolls out
    (container,) = new["spec"]["predictor"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    args = build_parser().parse_args(container["command"][1:])
    assert args.checkpoint == "$(SRS_CHECKPOINT)" and args.port == 8080
    assert (env["SRS_CHECKPOINT"], env["SRS_INDEX"]) == (
        "s3://srs-runs/r8/srs/best.pt", "s3://srs-runs/r8/index")


def test_labels_namespace_and_missing_inputs() -> None:
    labelled = rendered(labels={RUN_ID_LABEL: "run-1"})
    assert labelled["metadata"]["labels"][RUN_ID_LABEL] == "run-1"
    assert labelled["metadata"]["labels"]["app.kubernetes.io/component"] == "suggest"
    no_namespace = inference_service(NAME, "", BASE_IMAGE, CHECKPOINT, INDEX)
    assert "namespace" not in no_namespace["metadata"]  # left to `kubectl -n`
    with pytest.raises(ConfigError, match="needs a checkpoint and a library index.*build_index"):
        rendered(index="")


def test_ready_state_needs_the_current_generation_and_explains() -> None:
    isvc = {"metadata": {"generation": 2}, "status": isvc_status(True, generation=1)}
    ready, why = ready_state(isvc)
    assert not ready and "Ready is for generation 1, not yet 2" in why
    isvc["status"] = isvc_status(True, generation=2)
    assert ready_state(isvc) == (True, "")
    isvc["status"] = isvc_status(False, "RevisionMissing", "no ready Revision", generation=2)
    ready, why = ready_state(isvc)
    assert not ready and "Ready=False (RevisionMissing: no ready Revision)" in why
    assert "no conditions yet" in ready_state({"metadata": {}, "status": {}})[1]


# --- against the stub API server -----------------------------------------------------------


@pytest.fixture()
def stub():
    server = StubApiServer().start()
    yield server
    server.stop()


def apply(stub: StubApiServer, manifest: dict | None = None, **options):
    options = {"wait_seconds": 10, "poll_interval": 0.02, "request_timeout": 5, **options}
    return apply_inference_service(manifest or rendered(), Configuration(host=stub.url),
                                   **options)


def test_creates_when_absent_and_waits_for_ready(stub) -> None:
    stub.script(NAME, {}, isvc_status(False, "RevisionMissing", "starting"),
                isvc_status(True, url="http://srs-suggest.srs.example.com"))
    outcome = apply(stub)
    assert outcome.created and outcome.url == "http://srs-suggest.srs.example.com"
    (post,) = stub.calls("POST", ISVCS)
    assert post.body == rendered()
    assert not stub.calls("PUT")
    assert len(stub.calls("GET", f"{ISVCS}/{NAME}")) == 1 + 3  # the lookup, then until Ready


def test_updates_when_present_keeping_server_metadata(stub) -> None:
    old = rendered("s3://srs-runs/r6/srs/best.pt", "s3://srs-runs/r6/index")
    old["metadata"]["annotations"] = {"team": "nlp"}
    stub.add_isvc(old, isvc_status(True, generation=1))
    # the old revision stays Ready until KServe has seen the new generation (one GET per step:
    # the lookup, a wait that sees the old Ready, the new generation's Ready)
    stub.script(NAME, isvc_status(True, generation=1), isvc_status(True, generation=1),
                isvc_status(True, generation=2))
    outcome = apply(stub)
    assert not outcome.created and outcome.generation == 2
    (put,) = stub.calls("PUT", f"{ISVCS}/{NAME}")
    assert put.body["metadata"]["resourceVersion"] == "1"  # the optimistic-concurrency check
    assert put.body["metadata"]["finalizers"] == ["inferenceservice.finalizers"]  # KServe's
    assert put.body["metadata"]["annotations"] == {"team": "nlp"}
    assert put.body["spec"] == rendered()["spec"] and "status" not in put.body
    assert not stub.calls("POST")
    # it did not take the old generation's Ready for the new one
    assert len(stub.calls("GET", f"{ISVCS}/{NAME}")) == 3


def test_a_concurrent_change_is_read_again_and_retried(stub) -> None:
    stub.add_isvc(rendered("s3://old/best.pt", "s3://old/index"))
    stub.script(NAME, isvc_status(True, generation=2))
    racers = [1]

    def someone_else_writes() -> None:
        if racers:
            racers.pop()
            stub.isvcs[(NS, NAME)]["metadata"]["resourceVersion"] = "5"

    stub.on_replace = someone_else_writes
    outcome = apply(stub)
    puts = stub.calls("PUT", f"{ISVCS}/{NAME}")
    assert [p.body["metadata"]["resourceVersion"] for p in puts] == ["1", "5"]
    assert not outcome.created and stub.isvcs[(NS, NAME)]["metadata"]["resourceVersion"] == "6"


def test_not_ready_in_time_fails_with_the_conditions(stub) -> None:
    stub.script(NAME, isvc_status(False, "RevisionMissing",
                                  'Configuration "srs-suggest-predictor" does not have any '
                                  "ready Revision."))
    started = time.monotonic()
    with pytest.raises(DeployError) as info:
        apply(stub, wait_seconds=0.5)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"InferenceService {NS}/{NAME} did not become Ready within 0.5s" in message
    assert "Ready=False (RevisionMissing: Configuration" in message
    assert f"kubectl -n {NS} describe inferenceservice {NAME}" in message


def test_a_model_kserve_gave_up_on_fails_at_once(stub) -> None:
    failure = {"reason": "ModelLoadFailed", "message": "index built with another checkpoint"}
    stub.script(NAME, isvc_status(False, "PredictorNotReady", "crash loop", failure=failure))
    started = time.monotonic()
    with pytest.raises(DeployError, match="BlockedByFailedLoad.*ModelLoadFailed: index built"):
        apply(stub, wait_seconds=60)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(("method", "code", "words"), [
    ("POST", 403, "cannot create InferenceService srs/srs-suggest: the API server answered 403 "
                  "Forbidden: stub: POST refused (403) — the runner's ServiceAccount needs"),
    ("POST", 404, "cannot create InferenceService srs/srs-suggest: the API server answered 404"
                  " Not Found: stub: POST refused (404) — is KServe installed"),
    ("PUT", 422, "cannot update InferenceService srs/srs-suggest: the API server answered 422"),
    ("GET", 401, "cannot read InferenceService srs/srs-suggest: the API server answered 401"),
])
def test_api_errors_are_named(stub, method: str, code: int, words: str) -> None:
    if method == "PUT":
        stub.add_isvc(rendered("s3://old/best.pt", "s3://old/index"))
    stub.isvc_errors[method] = code
    with pytest.raises(DeployError) as info:
        apply(stub)
    assert words in str(info.value)


def test_a_silent_api_server_fails_within_the_request_timeout(stub) -> None:
    stub.hang = lambda request: "inferenceservices" in request.path
    started = time.monotonic()
    with pytest.raises(DeployError, match="did not answer within 0.3s"):
        apply(stub, request_timeout=0.3)
    assert time.monotonic() - started < 5


def test_no_wait_and_the_namespace_of_the_pod(stub, monkeypatch) -> None:
    monkeypatch.setenv("SRS_NAMESPACE", NS)
    manifest = inference_service(NAME, "", BASE_IMAGE, CHECKPOINT, INDEX)
    outcome = apply(stub, manifest, wait_seconds=0)
    assert outcome.namespace == NS and outcome.created
    assert len(stub.calls("GET")) == 1  # no wait for Ready
    monkeypatch.delenv("SRS_NAMESPACE")
    monkeypatch.setattr("srs_core.deploy.apply.SERVICE_ACCOUNT_NAMESPACE", Path("/nonexistent"))
    with pytest.raises(ConfigError, match="no namespace"):
        apply(stub, manifest)


def test_the_calls_deploy_makes_for_the_role(stub) -> None:
    """What the runner's Role must allow on serving.kserve.io/inferenceservices."""
    stub.add_isvc(rendered("s3://old/best.pt", "s3://old/index"))
    stub.script(NAME, isvc_status(True, generation=2))
    apply(stub)
    assert {r.method for r in stub.requests} == {"GET", "PUT"}  # get, update
    stub.isvcs.clear()
    apply(stub)
    assert {r.method for r in stub.requests} == {"GET", "PUT", "POST"}  # + create
    assert all(r.path.startswith(ISVCS) for r in stub.requests)
    role = next(doc for doc in yaml.safe_load_all((ROOT / "manifests/base/rbac.yaml").read_text())
                if doc["kind"] == "Role")
    (rule,) = [r for r in role["rules"] if r["apiGroups"] == ["serving.kserve.io"]]
    assert rule["resources"] == ["inferenceservices"]
    assert set(rule["verbs"]) == {"get", "update", "create"}  # exactly what was called


# --- the pipeline step's library call ------------------------------------------------------


def test_deploy_model_renders_to_the_run_and_applies(stub, tmp_path: Path) -> None:
    done = deploy_model("render", CHECKPOINT, INDEX, str(tmp_path), BASE_IMAGE, namespace=NS,
                        run_id="run-7")
    assert done["outcome"] is None and not stub.requests
    written = Path(RunOutputs(str(tmp_path)).inference_service)
    assert written == tmp_path / "serving" / "inferenceservice.yaml"
    expected = copy.deepcopy(rendered(labels={RUN_ID_LABEL: "run-7"}))
    assert yaml.safe_load(written.read_text()) == expected == yaml.safe_load(done["yaml"])
    stub.script(NAME, isvc_status(True))
    applied = deploy_model("apply", CHECKPOINT, INDEX, str(tmp_path), BASE_IMAGE, namespace=NS,
                           configuration=Configuration(host=stub.url), wait_seconds=5)
    assert applied["outcome"]["created"] and stub.calls("POST", ISVCS)
    with pytest.raises(ConfigError, match="deploy='yes'"):
        deploy_model("yes", CHECKPOINT, INDEX, str(tmp_path), BASE_IMAGE)
    assert DEPLOY_MODES[0] == "none"
