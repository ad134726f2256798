"""Rendering the PyTorchJob: structure, CRD-schema validation, spec checks and `srs job render`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from srs_core.cli import main
from srs_core.errors import ConfigError
from srs_core.launch import (
    JobSpec,
    build_pytorchjob,
    job_name,
    parse_key_values,
    parse_toleration,
    render_pytorchjob,
    render_yaml,
    validate_pytorchjob,
)
from srs_core.launch.pytorchjob import CRD_PATH
from srs_core.launch.spec import (
    _ENV_FIELDS,
    ENV_VARIABLES,
    POD_LABELS,
    WRITABLE_ENV,
    WRITABLE_MOUNTS,
)

SHARED_CRD = Path(__file__).resolve().parents[2] / "shared/schemas/kubeflow.org_pytorchjobs.yaml"

SPECS = {
    "cpu-single": JobSpec(name="srs-cpu", image="srs:cpu", cpu="6", nproc_per_node=2),
    "gpu-multi": JobSpec(
        name="srs-gpu", image="srs:cuda", workers=4, gpus_per_worker=8, cpu="32",
        memory="256Gi", shm_size="64Gi", node_selector={"nvidia.com/gpu.product": "H100"},
        tolerations=[parse_toleration("nvidia.com/gpu=present:NoSchedule")],
        nccl_socket_ifname="eth0", checkpoint_uri="s3://srs/runs/r1", run_id="r1",
        train_args=["train", "--preset", "paper", "train.epochs=5"], env={"EXTRA": "1"},
        active_deadline_seconds=86400),
}


def _container(manifest: dict, replica: str = "Master") -> dict:
    return manifest["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"][0]


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _pods(manifest: dict) -> list[dict]:
    return [r["template"] for r in manifest["spec"]["pytorchReplicaSpecs"].values()]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@pytest.mark.parametrize("key", sorted(SPECS))
def test_rendered_jobs_validate_against_the_crd(key):
    manifest = render_pytorchjob(SPECS[key])
    validate_pytorchjob(manifest, CRD_PATH)  # strict: unknown fields are errors too
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    # Read-only root: every place the code writes is a writable emptyDir of the pod.
    for pod in _pods(manifest):
        assert POD_LABELS.items() <= pod["metadata"]["labels"].items()
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        (container,) = pod["spec"]["containers"]
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts == {"/dev/shm": "dshm", **{p: n for n, p in WRITABLE_MOUNTS.items()}}
        assert all("emptyDir" in volumes[name] for name in mounts.values())
        assert not any(m.get("readOnly") for m in container["volumeMounts"])
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        env = _env(container)
        assert {k: env[k] for k in WRITABLE_ENV} == WRITABLE_ENV
        for path in [*WRITABLE_ENV.values(), container["workingDir"]]:
            assert any(_under(path, mount) for mount in mounts), path
        assert env["SRS_CACHE_DIR"] != env["TMPDIR"]  # the cache is not wiped with /tmp


def _restricted_violations(pod: dict) -> list[str]:
    """The checks of the Pod Security Standard "restricted" (Kubernetes 1.29+) a pod fails."""
    spec, problems = pod["spec"], []
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
    problems += [f"host namespace {k}" for k in ("hostNetwork", "hostPID", "hostIPC")
                 if spec.get(k)]
    problems += [f"volume {v['name']}" for v in spec.get("volumes", [])
                 if not set(v) - {"name"} <= allowed_volumes]
    pod_context = spec.get("securityContext", {})
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = {**pod_context, **container.get("securityContext", {})}
        name = container["name"]
        if context.get("privileged") or context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: privilege escalation allowed")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []) or set(capabilities.get("add", [])) - {
                "NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities not dropped")
        if context.get("runAsNonRoot") is not True or context.get("runAsUser") == 0:
            problems.append(f"{name}: may run as root")
        if context.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: no seccomp profile")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            problems.append(f"{name}: host port")
    return problems


@pytest.mark.parametrize("key", sorted(SPECS))
def test_job_pods_meet_pod_security_restricted(key):
    for pod in _pods(render_pytorchjob(SPECS[key])):
        assert _restricted_violations(pod) == []
    # The checker does catch what the launcher leaves out.
    bare = {"spec": {"containers": [{"name": "step", "securityContext": {"runAsUser": 1000,
                                                                         "runAsNonRoot": True}}]}}
    assert _restricted_violations(bare) == [
        "step: privilege escalation allowed", "step: capabilities not dropped",
        "step: no seccomp profile"]


def test_vendored_crd_is_the_shared_copy():
    if not SHARED_CRD.exists():
        pytest.skip("no ../shared checkout next to the repository (clean CI clone)")
    assert CRD_PATH.read_bytes() == SHARED_CRD.read_bytes()


def test_multi_node_gpu_job_structure():
    spec = SPECS["gpu-multi"]
    manifest = render_pytorchjob(spec)
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert {k: (v["replicas"], v["restartPolicy"]) for k, v in replicas.items()} == {
        "Master": (1, "OnFailure"), "Worker": (3, "OnFailure")}
    assert manifest["spec"]["nprocPerNode"] == "8"
    assert manifest["spec"]["runPolicy"] == {
        "backoffLimit": 3, "cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 604800,
        "activeDeadlineSeconds": 86400}
    container = _container(manifest, "Worker")
    assert container["name"] == "pytorch" and container["command"] == ["torchrun"]
    assert container["args"] == ["-m", "srs_core.cli", "train", "--preset", "paper",
                                 "train.epochs=5", "train.output=s3://srs/runs/r1"]
    assert container["ports"] == [{"containerPort": 23456, "name": "pytorchjob-port",
                                   "protocol": "TCP"}]
    assert container["resources"] == {
        "requests": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"},
        "limits": {"memory": "256Gi", "nvidia.com/gpu": "8"}}
    env = _env(container)
    assert env["NCCL_DEBUG"] == "WARN" and env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert env["SRS_RUN_ID"] == "r1" and env["EXTRA"] == "1" and "OMP_NUM_THREADS" not in env
    for key in ("SRS_S3_ENDPOINT", "SRS_S3_ACCESS_KEY", "SRS_S3_SECRET_KEY", "SRS_S3_SECURE"):
        assert env[key] == {"secretKeyRef": {"name": "srs-minio", "key": key,
                                             "optional": key == "SRS_S3_SECURE"}}
    pod = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert pod["metadata"]["labels"]["srs-kubeflow/run-id"] == "r1"
    assert manifest["metadata"]["labels"]["srs-kubeflow/run-id"] == "r1"
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert pod["spec"]["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
        {"name": "home", "emptyDir": {}}, {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}}]
    assert container["volumeMounts"] == [
        {"name": "dshm", "mountPath": "/dev/shm"}, {"name": "home", "mountPath": "/home/srs"},
        {"name": "cache", "mountPath": "/cache"}, {"name": "tmp", "mountPath": "/tmp"}]
    assert container["workingDir"] == "/home/srs"  # the images' HOME (images/Dockerfile.*)
    assert env["HOME"] == "/home/srs" and env["SRS_CACHE_DIR"] == "/cache/srs"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal",
                                           "value": "present", "effect": "NoSchedule"}]
    assert pod["spec"]["serviceAccountName"] == "srs-trainer"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_single_cpu_replica_has_no_worker_and_shares_its_cpus():
    manifest = render_pytorchjob(SPECS["cpu-single"])
    assert list(manifest["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert manifest["spec"]["nprocPerNode"] == "2"
    env = _env(_container(manifest))
    assert env["OMP_NUM_THREADS"] == "3"  # 6 CPUs / 2 processes
    assert "nvidia.com/gpu" not in _container(manifest)["resources"]["limits"]


def test_builder_returns_kubeflow_training_sdk_models():
    from kubeflow.training import KubeflowOrgV1PyTorchJob, KubeflowOrgV1ReplicaSpec

    job = build_pytorchjob(SPECS["gpu-multi"])
    assert isinstance(job, KubeflowOrgV1PyTorchJob)
    assert all(isinstance(r, KubeflowOrgV1ReplicaSpec)
               for r in job.spec.pytorch_replica_specs.values())


@pytest.mark.parametrize(("path", "value", "expected"), [
    (("spec", "nprocPerNodes"), "1", "'nprocPerNodes' was unexpected"),
    (("spec", "pytorchReplicaSpecs", "Master", "replicas"), "one", "is not of type 'integer'"),
    (("spec", "runPolicy", "backoffLimit"), "3", "is not of type 'integer'"),
])
def test_validation_names_the_bad_field(path, value, expected):
    manifest = copy.deepcopy(render_pytorchjob(SPECS["cpu-single"]))
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=expected) as info:
        validate_pytorchjob(manifest)
    assert ".".join(path[:-1]) in str(info.value) or path[-1] in str(info.value)


def test_validation_requires_replica_specs():
    manifest = render_pytorchjob(SPECS["cpu-single"])
    del manifest["spec"]["pytorchReplicaSpecs"]
    with pytest.raises(ConfigError, match="'pytorchReplicaSpecs' is a required property"):
        validate_pytorchjob(manifest)


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "Bad_Name"}, "DNS-1035"),
    ({"name": "x" * 51}, "DNS-1035"),
    ({"image": ""}, "image is empty"),
    ({"workers": 0}, "workers=0"),
    ({"gpus_per_worker": 2, "nproc_per_node": 4}, "exceeds gpus_per_worker=2"),
    ({"memory": "16GB"}, "not a Kubernetes quantity"),
    ({"run_id": "a" * 64}, "not a valid label value"),
    ({"env": {"NCCL_DEBUG": "INFO"}}, "set by the launcher"),
    ({"env": {"SRS_CACHE_DIR": "/data"}}, "set by the launcher"),  # must stay on a volume
    ({"labels": {"app.kubernetes.io/component": "eval"}}, "NetworkPolicy"),
    ({"train_args": ["train", "train.output=/elsewhere"], "checkpoint_uri": "s3://b/c"},
     "give only one"),
])
def test_bad_specs_are_config_errors(change, message):
    spec = JobSpec(name="srs-x", image="srs:1").with_overrides(**change)
    with pytest.raises(ConfigError, match=message):
        render_pytorchjob(spec)


def test_parsers():
    assert parse_key_values("a=1, b=x=y,") == {"a": "1", "b": "x=y"}
    assert parse_toleration("gpu") == {"key": "gpu", "operator": "Exists"}
    assert parse_toleration("gpu:NoExecute") == {"key": "gpu", "operator": "Exists",
                                                 "effect": "NoExecute"}
    with pytest.raises(ConfigError, match="effect must be one of"):
        parse_toleration("gpu=1:Sometimes")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_key_values("novalue")


def test_job_name_is_stable_valid_and_short():
    run = "9f1c2a7e-1234-4bcd-9aaa-0123456789AB"
    assert job_name("srs-train", run) == job_name("srs-train", run)
    assert job_name("srs-train", run) == "srs-train-9f1c2a7e-1234-4bcd-9aaa-0123456789ab"
    long_a, long_b = job_name("srs-train", "x" * 80 + "a"), job_name("srs-train", "x" * 80 + "b")
    assert long_a != long_b and len(long_a) <= 50
    for name in (long_a, job_name("srs-train", "Run_7!")):
        JobSpec(name=name, image="i").validate()


def test_defaults_come_from_the_configmap_environment():
    assert {var for var, _ in _ENV_FIELDS.values()} == set(ENV_VARIABLES)
    env = {"SRS_JOB_IMAGE": "srs:cuda", "SRS_JOB_WORKERS": "2", "SRS_JOB_GPUS_PER_WORKER": "4",
           "SRS_JOB_NODE_SELECTOR": "pool=gpu,zone=a", "SRS_JOB_TOLERATIONS": "gpu:NoSchedule",
           "SRS_JOB_NPROC_PER_NODE": ""}
    spec = JobSpec.from_env(env, workers=3)
    assert (spec.image, spec.workers, spec.gpus_per_worker, spec.processes_per_worker) == (
        "srs:cuda", 3, 4, 4)
    assert spec.node_selector == {"pool": "gpu", "zone": "a"}
    assert spec.tolerations == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    with pytest.raises(ConfigError, match="SRS_JOB_WORKERS='two'"):
        JobSpec.from_env({"SRS_JOB_WORKERS": "two"})


def test_cli_render_prints_a_valid_job_without_secret_values(capsys, monkeypatch):
    monkeypatch.setenv("SRS_S3_SECRET_KEY", "do-not-print-me")
    monkeypatch.setenv("SRS_JOB_MEMORY", "32Gi")
    code = main(["job", "render", "--image", "srs:cuda", "--workers", "2",
                 "--gpus-per-worker", "2", "--node-selector", "pool=gpu", "--toleration",
                 "gpu:NoSchedule", "--run-id", "run-42", "--checkpoint", "s3://srs/runs/42",
                 "--", "train", "--preset", "tiny"])
    out = capsys.readouterr().out
    assert code == 0 and "do-not-print-me" not in out
    manifest = yaml.safe_load(out)
    validate_pytorchjob(manifest)
    assert manifest["metadata"]["name"] == "srs-train-run-42"
    container = _container(manifest)
    assert container["args"][2:] == ["train", "--preset", "tiny", "train.output=s3://srs/runs/42"]
    assert container["resources"]["requests"]["memory"] == "32Gi"
    assert render_yaml(JobSpec(name="a", image="b")).count("&id") == 0


def test_cli_render_reports_a_bad_flag_as_an_error(capsys):
    assert main(["job", "render", "--image", "srs:1", "--memory", "lots"]) == 2


@pytest.mark.parametrize("key", sorted(SPECS))
def test_pods_give_a_preempted_run_time_to_checkpoint(key):
    """SIGTERM -> checkpoint at the step boundary needs a grace period before the kubelet's
    SIGKILL, and torchrun must wait for its workers nearly as long (its default is 30 s)."""
    from srs_core.launch.spec import TERMINATION_GRACE_SECONDS

    manifest = render_pytorchjob(SPECS[key])
    validate_pytorchjob(manifest, CRD_PATH)
    for pod in _pods(manifest):
        assert pod["spec"]["terminationGracePeriodSeconds"] == TERMINATION_GRACE_SECONDS >= 120
        (container,) = pod["spec"]["containers"]
        wait = int(_env(container)["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
        assert 60 <= wait < TERMINATION_GRACE_SECONDS
    longer = render_pytorchjob(SPECS[key].with_overrides(termination_grace_seconds=900))
    assert all(p["spec"]["terminationGracePeriodSeconds"] == 900 for p in _pods(longer))
    with pytest.raises(ConfigError, match="termination_grace_seconds=10 leaves no time"):
        render_pytorchjob(SPECS[key].with_overrides(termination_grace_seconds=10))
