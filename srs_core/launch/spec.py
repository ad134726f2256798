"""The job-neutral description of an SRS training job, and the pod every job kind runs.

:class:`JobSpec` says what varies between runs (image, command, nodes, processes, GPUs,
resources, env, Secret, node placement, queue, priority, deadlines, labels); the backends
(:mod:`.pytorchjob`, :mod:`.trainjob`) wrap the same pod template in their own object. Keeping
the pod here means both generations run the same container with the same security settings.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from srs_core.errors import ConfigError
from srs_core.launch.parsing import TAINT_EFFECTS, parse_key_values, parse_tolerations
from srs_core.store.cache import CACHE_DIR_ENV
from srs_core.store.s3_config import ENV_KEYS, OPTIONAL_ENV_KEYS, SECRET_NAME

RUN_ID_LABEL = "srs-kubeflow/run-id"
CHECKPOINT_ANNOTATION = "srs-kubeflow/checkpoint"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue admits jobs carrying it
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"  # a Kueue WorkloadPriorityClass
# Every pod of every SRS job carries these; manifests/base/networkpolicy.yaml selects them.
POD_LABELS = {"app.kubernetes.io/name": "srs", "app.kubernetes.io/component": "train"}

# The root filesystem is read-only, so every place written at run time is an emptyDir, and the
# variables below point each library there instead of at an unwritable default.
HOME_DIR = "/home/srs"  # the images' HOME and WORKDIR (uid 1000, images/Dockerfile.*)
CACHE_DIR = "/cache"
WRITABLE_MOUNTS = {"home": HOME_DIR, "cache": CACHE_DIR, "tmp": "/tmp"}
WRITABLE_ENV = {
    "HOME": HOME_DIR,  # ~/.nv (CUDA's JIT cache), ~/.config; also the working directory
    "TMPDIR": "/tmp",
    "XDG_CACHE_HOME": CACHE_DIR,  # torch hub / timm weights, huggingface, fontconfig
    CACHE_DIR_ENV: f"{CACHE_DIR}/srs",  # srs_core.store.cache_root: downloads, upload staging
    "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/torchinductor",
    "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
    "MPLCONFIGDIR": f"{HOME_DIR}/.config/matplotlib",  # whatever HOME an image sets
}

# On SIGTERM (a preempted node, a deleted pod) every rank finishes its step and writes a
# checkpoint before it exits (srs_core.train.loop). The paper model's checkpoint (weights and
# AdamW state, 2.44 GB, 203 M parameters) takes about 25 s to write and upload at 100 MB/s; a
# step takes seconds. The grace period leaves several times that before the kubelet's SIGKILL,
# and torchrun waits for its workers that long minus a margin for its own exit (it would
# SIGKILL them after 30 s by default).
TERMINATION_GRACE_SECONDS = 300
_TORCHRUN_MARGIN_SECONDS = 15
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"  # torchrun's wait for its workers

# Pod and Service names are "<job>-worker-<i>"; Services must be DNS-1035 labels of <= 63 chars.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,48}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?)?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE])?$")


@dataclass
class JobSpec:
    """Everything that varies between SRS training jobs; :func:`build_pytorchjob` does the rest."""

    name: str
    image: str
    namespace: str = "srs"
    train_args: list[str] = field(default_factory=lambda: ["train"])
    workers: int = 1  # replicas in total, the Master included
    nproc_per_node: int | None = None  # processes per replica; default: GPUs, or 1 on CPU
    gpus_per_worker: int = 0
    cpu: str = "4"
    memory: str = "16Gi"
    cpu_limit: str | None = None  # None: no CPU limit (throttling hurts data loading)
    memory_limit: str | None = None  # None: same as the request
    shm_size: str = "8Gi"  # /dev/shm for DataLoader workers and NCCL
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    secret_name: str | None = SECRET_NAME  # Secret with the SRS_S3_* keys
    service_account: str | None = "srs-trainer"
    nccl_debug: str = "WARN"
    nccl_socket_ifname: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    checkpoint_uri: str | None = None  # passed as train.output=URI: restarts resume from it
    run_id: str | None = None
    backoff_limit: int = 3  # pod restarts (each resumes from the last checkpoint) before Failed
    # seconds from SIGTERM to SIGKILL: time to finish the step and write a checkpoint
    termination_grace_seconds: int = TERMINATION_GRACE_SECONDS
    ttl_seconds_after_finished: int | None = 7 * 24 * 3600
    active_deadline_seconds: int | None = None
    image_pull_policy: str = "IfNotPresent"
    labels: dict[str, str] = field(default_factory=dict)
    # Kueue: the LocalQueue that admits the job (None: scheduled directly), and the Kueue
    # WorkloadPriorityClass that orders it in that queue (only meaningful behind a queue).
    queue_name: str | None = None
    priority_class: str | None = None
    runtime: str = "srs-torch"  # Trainer v2 only: the ClusterTrainingRuntime it references
    # {"name", "uid"} of the pod that launches the job (job_owner=step): the job is then
    # garbage-collected with that pod, so a deleted run leaves no GPU job behind.
    owner: dict[str, str] | None = None

    @property
    def processes_per_worker(self) -> int:
        """torchrun processes in each replica (one per GPU on GPU nodes)."""
        return self.nproc_per_node or self.gpus_per_worker or 1

    def validate(self) -> JobSpec:
        """Raise ConfigError naming the first bad field; return self."""
        where = f"job spec {self.name!r}"
        if not _NAME.match(self.name):
            raise ConfigError(f"{where}: name must be a DNS-1035 label of at most 50 characters "
                              "(lowercase letters, digits, '-'; starts with a letter)")
        if not self.image:
            raise ConfigError(f"{where}: image is empty; pass --image or set SRS_JOB_IMAGE")
        for key in ("workers", "backoff_limit"):
            if getattr(self, key) < (1 if key == "workers" else 0):
                raise ConfigError(f"{where}: {key}={getattr(self, key)} is out of range")
        if self.termination_grace_seconds <= _TORCHRUN_MARGIN_SECONDS:
            raise ConfigError(f"{where}: termination_grace_seconds="
                              f"{self.termination_grace_seconds} leaves no time for a "
                              f"checkpoint; give more than {_TORCHRUN_MARGIN_SECONDS}")
        if self.gpus_per_worker < 0 or self.processes_per_worker < 1:
            raise ConfigError(f"{where}: gpus_per_worker and nproc_per_node must be positive")
        if self.gpus_per_worker and self.processes_per_worker > self.gpus_per_worker:
            raise ConfigError(f"{where}: nproc_per_node={self.processes_per_worker} exceeds "
                              f"gpus_per_worker={self.gpus_per_worker} (one process per GPU)")
        for key in ("cpu", "memory", "cpu_limit", "memory_limit", "shm_size"):
            value = getattr(self, key)
            if value is not None and not _QUANTITY.match(str(value)):
                raise ConfigError(f"{where}: {key}={value!r} is not a Kubernetes quantity "
                                  "(e.g. 4, 500m, 16Gi)")
        if self.run_id is not None and not _LABEL_VALUE.match(self.run_id):
            raise ConfigError(f"{where}: run_id {self.run_id!r} is not a valid label value "
                              "(<= 63 of A-Z a-z 0-9 - _ .)")
        for key in ("queue_name", "priority_class"):
            value = getattr(self, key)
            if value is not None and not (value and _LABEL_VALUE.match(value)):
                raise ConfigError(f"{where}: {key} {value!r} is not a valid label value")
        if self.priority_class and not self.queue_name:
            raise ConfigError(f"{where}: priority_class {self.priority_class!r} is a Kueue "
                              "WorkloadPriorityClass and needs a queue_name (--queue)")
        if self.owner is not None and not (self.owner.get("name") and self.owner.get("uid")):
            raise ConfigError(f"{where}: owner needs the pod's name and uid (downward API "
                              "SRS_POD_NAME / SRS_POD_UID)")
        clash = sorted(k for k, v in self.labels.items() if POD_LABELS.get(k, v) != v)
        if clash:
            raise ConfigError(f"{where}: labels {', '.join(clash)} are set by the launcher (the "
                              "NetworkPolicy of manifests/base selects the pods by them)")
        for toleration in self.tolerations:
            if toleration.get("effect") and toleration["effect"] not in TAINT_EFFECTS:
                raise ConfigError(f"{where}: toleration effect {toleration['effect']!r} is not "
                                  f"one of {', '.join(TAINT_EFFECTS)}")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str], /, **values: Any) -> JobSpec:
        """Defaults from ``SRS_JOB_*`` variables (the srs-defaults ConfigMap), then ``values``."""
        merged: dict[str, Any] = {}
        for name, (var, parse) in _ENV_FIELDS.items():
            if environ.get(var, "") != "":
                try:
                    merged[name] = parse(environ[var])
                except ValueError as exc:
                    raise ConfigError(f"environment {var}={environ[var]!r}: {exc}") from exc
        merged.update({k: v for k, v in values.items() if v is not None})
        merged.setdefault("name", "srs-train")
        merged.setdefault("image", "")
        return cls(**merged)

    def with_overrides(self, **values: Any) -> JobSpec:
        """A copy with the given fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


def job_name(prefix: str, run_id: str) -> str:
    """The same valid job name for every attempt of a run, so a restarted launcher adopts it."""
    text = re.sub(r"[^a-z0-9]+", "-", f"{prefix}-{run_id}".lower()).strip("-")
    if len(text) > 50 or not run_id:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
        text = f"{text[:41].rstrip('-')}-{digest}"
    if not _NAME.match(text):
        raise ConfigError(f"job name prefix {prefix!r} must start with a lowercase letter")
    return text


_ENV_FIELDS: dict[str, tuple[str, Any]] = {
    "namespace": ("SRS_JOB_NAMESPACE", str),
    "image": ("SRS_JOB_IMAGE", str),
    "workers": ("SRS_JOB_WORKERS", int),
    "nproc_per_node": ("SRS_JOB_NPROC_PER_NODE", int),
    "gpus_per_worker": ("SRS_JOB_GPUS_PER_WORKER", int),
    "cpu": ("SRS_JOB_CPU", str),
    "memory": ("SRS_JOB_MEMORY", str),
    "cpu_limit": ("SRS_JOB_CPU_LIMIT", str),
    "memory_limit": ("SRS_JOB_MEMORY_LIMIT", str),
    "shm_size": ("SRS_JOB_SHM_SIZE", str),
    "node_selector": ("SRS_JOB_NODE_SELECTOR", parse_key_values),
    "tolerations": ("SRS_JOB_TOLERATIONS", parse_tolerations),
    "secret_name": ("SRS_JOB_SECRET", str),
    "service_account": ("SRS_JOB_SERVICE_ACCOUNT", str),
    "nccl_debug": ("SRS_JOB_NCCL_DEBUG", str),
    "nccl_socket_ifname": ("SRS_JOB_NCCL_SOCKET_IFNAME", str),
    "backoff_limit": ("SRS_JOB_BACKOFF_LIMIT", int),
    "ttl_seconds_after_finished": ("SRS_JOB_TTL_SECONDS", int),
    "queue_name": ("SRS_JOB_QUEUE", str),
    "priority_class": ("SRS_JOB_PRIORITY_CLASS", str),
    "runtime": ("SRS_JOB_RUNTIME", str),
}
ENV_VARIABLES = tuple(var for var, _ in _ENV_FIELDS.values())


def cpu_count(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def train_args(spec: JobSpec) -> list[str]:
    args = list(spec.train_args)
    if spec.checkpoint_uri:
        wanted = f"train.output={spec.checkpoint_uri}"
        given = [a for a in args if a.startswith("train.output=")]
        if given and given[-1] != wanted:
            raise ConfigError(f"job spec {spec.name!r}: train args set {given[-1]!r} but the "
                              f"checkpoint URI is {spec.checkpoint_uri!r}; give only one")
        if not given:
            args.append(wanted)
    return args


def shutdown_timeout(spec: JobSpec) -> int:
    """Seconds torchrun waits for its SIGTERM'd workers to checkpoint before it kills them."""
    return spec.termination_grace_seconds - _TORCHRUN_MARGIN_SECONDS


def environment(spec: JobSpec) -> list[Any]:
    """The container env as ``V1EnvVar`` models: NCCL, writable paths, run id, Secret refs."""
    from kubernetes import client as k8s

    env = [k8s.V1EnvVar(name="NCCL_DEBUG", value=spec.nccl_debug),
           k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
           k8s.V1EnvVar(name="SRS_JOB_NAME", value=spec.name),
           k8s.V1EnvVar(name=SHUTDOWN_TIMEOUT_ENV, value=str(shutdown_timeout(spec)))]
    env += [k8s.V1EnvVar(name=key, value=value) for key, value in WRITABLE_ENV.items()]
    if spec.nccl_socket_ifname:
        env.append(k8s.V1EnvVar(name="NCCL_SOCKET_IFNAME", value=spec.nccl_socket_ifname))
    if not spec.gpus_per_worker:
        # torchrun would pin each CPU process to one thread; share the pod's CPUs instead.
        threads = max(1, int(cpu_count(spec.cpu) // spec.processes_per_worker))
        env.append(k8s.V1EnvVar(name="OMP_NUM_THREADS", value=str(threads)))
    if spec.run_id:
        env.append(k8s.V1EnvVar(name="SRS_RUN_ID", value=spec.run_id))
    if spec.secret_name:
        # Values stay in the Secret; the job only names it (nothing secret is rendered).
        for key in ENV_KEYS:
            ref = k8s.V1SecretKeySelector(name=spec.secret_name, key=key,
                                          optional=key in OPTIONAL_ENV_KEYS)
            env.append(k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(secret_key_ref=ref)))
    reserved = {e.name for e in env}
    for key, value in spec.env.items():
        if key in reserved:
            raise ConfigError(f"job spec {spec.name!r}: env {key} is set by the launcher")
        env.append(k8s.V1EnvVar(name=key, value=str(value)))
    return env


def job_labels(spec: JobSpec) -> dict[str, str]:
    """Labels of the pods (and of the job): the NetworkPolicy's, the caller's, the run id."""
    labels = {**POD_LABELS, **spec.labels}  # validate() refused changes to POD_LABELS
    if spec.run_id:
        labels[RUN_ID_LABEL] = spec.run_id
    return labels


def object_metadata(spec: JobSpec) -> dict[str, Any]:
    """metadata of the job object: pod labels plus Kueue's (never on pods: Kueue's pod
    integration would gate pods carrying a queue label), annotations, owner."""
    labels = job_labels(spec)
    if spec.queue_name:
        labels[QUEUE_LABEL] = spec.queue_name
    if spec.priority_class:
        labels[PRIORITY_LABEL] = spec.priority_class
    meta: dict[str, Any] = {"name": spec.name, "namespace": spec.namespace, "labels": labels}
    if spec.checkpoint_uri:
        meta["annotations"] = {CHECKPOINT_ANNOTATION: spec.checkpoint_uri}
    if spec.owner:
        # Not a controller and no blockOwnerDeletion: deleting the pod deletes the job in the
        # background, and creating it needs no extra permission on pods/finalizers.
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod",
                                    "name": spec.owner["name"], "uid": spec.owner["uid"],
                                    "controller": False, "blockOwnerDeletion": False}]
    return meta


def container_resources(spec: JobSpec) -> dict[str, dict[str, str]]:
    """``requests`` and ``limits`` of one training container (GPUs in both)."""
    requests = {"cpu": spec.cpu, "memory": spec.memory}
    limits = {"memory": spec.memory_limit or spec.memory}
    if spec.cpu_limit:
        limits["cpu"] = spec.cpu_limit
    if spec.gpus_per_worker:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(spec.gpus_per_worker)
    return {"requests": requests, "limits": limits}


def pod_template(spec: JobSpec, labels: dict[str, str], container_name: str,
                 port_name: str | None = None) -> Any:
    """The ``V1PodTemplateSpec`` every job kind runs (``container_name``: the name into which
    the operator injects its torchrun env; ``port_name``: the rendezvous port, if it has one)."""
    from kubernetes import client as k8s

    container = k8s.V1Container(
        name=container_name,
        image=spec.image,
        image_pull_policy=spec.image_pull_policy,
        command=["torchrun"],
        args=["-m", "srs_core.cli", *train_args(spec)],
        env=environment(spec),
        ports=[k8s.V1ContainerPort(name=port_name, container_port=23456, protocol="TCP")]
        if port_name else None,
        resources=k8s.V1ResourceRequirements(**container_resources(spec)),
        working_dir=HOME_DIR,  # a relative train.output lands on a writable volume
        volume_mounts=[k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")] + [
            k8s.V1VolumeMount(name=name, mount_path=path)
            for name, path in WRITABLE_MOUNTS.items()],
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"]),
            read_only_root_filesystem=True),
    )
    # emptyDirs live and die with the pod: a restarted pod resumes from the checkpoint URI, not
    # from anything left on these volumes.
    volumes = [k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(
        medium="Memory", size_limit=spec.shm_size))]
    volumes += [k8s.V1Volume(name=name, empty_dir=k8s.V1EmptyDirVolumeSource())
                for name in WRITABLE_MOUNTS]
    pod = k8s.V1PodSpec(
        containers=[container],
        volumes=volumes,
        node_selector=dict(spec.node_selector) or None,
        tolerations=[k8s.V1Toleration(**t) for t in spec.tolerations] or None,
        service_account_name=spec.service_account,
        automount_service_account_token=False,  # training never talks to the API server
        termination_grace_period_seconds=spec.termination_grace_seconds,
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=1000, run_as_group=1000, fs_group=1000,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
    )
    # Istio sidecars outlive the training container and keep a finished job Running.
    metadata = k8s.V1ObjectMeta(labels=labels, annotations={"sidecar.istio.io/inject": "false"})
    return k8s.V1PodTemplateSpec(metadata=metadata, spec=pod)


