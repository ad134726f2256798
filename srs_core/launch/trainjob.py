"""Kubeflow Trainer v2: the SRS job as a TrainJob on the ``srs-torch`` ClusterTrainingRuntime.

Trainer v2 splits a job in two: a *runtime* (cluster-scoped, installed once from
``manifests/trainer/``) holds what every SRS job shares — the torch ML policy, the pod's
security context, the writable emptyDirs, the JobSet failure policy — and the *TrainJob* holds
what a run decides: image, command, ``numNodes``, ``numProcPerNode``, resources, env (the MinIO
Secret as references), and, through a ``runtimePatches`` entry, the pod labels, node placement,
service account and the size of ``/dev/shm``. Trainer's torch plugin injects the same
``PET_NNODES``/``PET_NPROC_PER_NODE``/``PET_NODE_RANK``/``PET_MASTER_ADDR``/``PET_MASTER_PORT``
as the Training Operator, so the container runs the same ``torchrun -m srs_core.cli ...``.

Pods come from a JobSet (one indexed Job ``<name>-node-0``, one pod per node); their labels are
JobSet's (``jobset.sigs.k8s.io/jobset-name`` = the TrainJob's name) and the Job controller's
completion index is the node rank. Objects are built with the ``kubeflow_trainer_api`` models
(``kubeflow`` SDK 0.5.0) and validated against the vendored Trainer v2.3.0 CRDs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from srs_core.launch.backend import Backend, JobStatus
from srs_core.launch.schema import SCHEMAS, dump_yaml, to_dict, validate_object
from srs_core.launch.spec import (
    POD_LABELS,
    JobSpec,
    container_resources,
    environment,
    job_labels,
    object_metadata,
    pod_template,
    train_args,
)

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
CONTAINER = "node"  # Trainer injects PET_* into the container of this name
REPLICATED_JOB = "node"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"  # marks the trainer job
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # = the TrainJob's name
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"  # the node rank
PATCH_MANAGER = "srs-kubeflow.io/launcher"
TRAINJOB_CRD = SCHEMAS / "trainer.kubeflow.org_trainjobs.yaml"
RUNTIME_CRD = SCHEMAS / "trainer.kubeflow.org_clustertrainingruntimes.yaml"
RUNTIME_NAME = "srs-torch"


def _pod_patch(spec: JobSpec) -> dict[str, Any]:
    """What a run changes in the runtime's pod: labels, placement, account, /dev/shm size,
    the grace period after SIGTERM."""
    pod: dict[str, Any] = {
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory",
                                                  "sizeLimit": spec.shm_size}}]}
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    pod["terminationGracePeriodSeconds"] = spec.termination_grace_seconds
    return {"metadata": {"labels": job_labels(spec)}, "spec": pod}


def trainjob_dict(spec: JobSpec) -> dict[str, Any]:
    """The TrainJob as a plain dict (before the SDK model and the schema check)."""
    from kubernetes.client import ApiClient

    spec.validate()
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": ["torchrun"],
        "args": ["-m", "srs_core.cli", *train_args(spec)],
        # All of it, not only what differs from the runtime: the pods are right even on a
        # runtime that lacks the writable-path variables.
        "env": ApiClient().sanitize_for_serialization(environment(spec)),
        "numNodes": spec.workers,
        "numProcPerNode": spec.processes_per_worker,
        "resourcesPerNode": container_resources(spec),
    }
    job_spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": RUNTIME_KIND,
                       "name": spec.runtime},
        "trainer": trainer,
        "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {
            "spec": {"replicatedJobs": [{"name": REPLICATED_JOB, "template": {"spec": {
                "template": _pod_patch(spec)}}}]}}}}],
    }
    if spec.queue_name:
        job_spec["suspend"] = True  # Kueue resumes it on admission
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": object_metadata(spec),
            "spec": job_spec}


def build_trainjob(spec: JobSpec) -> Any:
    """The job as a ``kubeflow_trainer_api`` ``TrainerV1alpha1TrainJob`` model."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    return TrainerV1alpha1TrainJob.from_dict(trainjob_dict(spec))


def validate_trainjob(manifest: Mapping[str, Any], strict: bool = True) -> None:
    """Raise ConfigError listing every violation of the TrainJob CRD schema."""
    validate_object(manifest, TRAINJOB_CRD, "v1alpha1", strict)


def render_trainjob(spec: JobSpec) -> dict[str, Any]:
    """Build with the SDK model, serialise and validate: the manifest as a dict."""
    manifest = to_dict(build_trainjob(spec))
    validate_trainjob(manifest)
    return manifest


def build_runtime(spec: JobSpec | None = None, name: str = RUNTIME_NAME) -> Any:
    """The ``srs-torch`` ClusterTrainingRuntime (model) that every SRS TrainJob references.

    Its pod is :func:`~srs_core.launch.spec.pod_template` with the ``node`` container: uid
    1000, read-only root, no capabilities, emptyDirs for HOME, caches and /tmp, an in-memory
    /dev/shm. A pod failure fails the node's Job (``backoffLimit: 0``) and JobSet restarts
    every node (``maxRestarts``), so all ranks resume together from the last checkpoint.
    """
    from kubeflow_trainer_api.models import TrainerV1alpha1ClusterTrainingRuntime
    from kubernetes.client import ApiClient

    spec = spec or JobSpec(name="srs-runtime", image="ghcr.io/srs-kubeflow/srs:0.1.0-cuda")
    template = ApiClient().sanitize_for_serialization(
        pod_template(spec, dict(POD_LABELS), CONTAINER))
    template["spec"]["restartPolicy"] = "Never"  # JobSet restarts the whole group instead
    runtime = {
        "apiVersion": API_VERSION, "kind": RUNTIME_KIND,
        "metadata": {"name": name, "labels": {"trainer.kubeflow.org/framework": "torch"}},
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {"spec": {
                "failurePolicy": {"maxRestarts": spec.backoff_limit},
                "replicatedJobs": [{
                    "name": REPLICATED_JOB, "replicas": 1,
                    "template": {"metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                                 "spec": {"backoffLimit": 0, "template": template}}}],
            }},
        },
    }
    if spec.ttl_seconds_after_finished is not None:
        runtime["spec"]["template"]["spec"]["ttlSecondsAfterFinished"] = \
            spec.ttl_seconds_after_finished
    return TrainerV1alpha1ClusterTrainingRuntime.from_dict(runtime)


def validate_runtime(manifest: Mapping[str, Any], strict: bool = True) -> None:
    """Raise ConfigError listing every violation of the ClusterTrainingRuntime CRD schema."""
    validate_object(manifest, RUNTIME_CRD, "v1alpha1", strict)


def render_runtime(spec: JobSpec | None = None, name: str = RUNTIME_NAME) -> dict[str, Any]:
    """The validated runtime as a dict (``manifests/trainer/`` ships it)."""
    manifest = to_dict(build_runtime(spec, name))
    validate_runtime(manifest)
    return manifest


def render_yaml(spec: JobSpec, with_runtime: bool = False) -> str:
    """The validated TrainJob (and, if asked, the runtime it needs) as YAML."""
    docs = [render_runtime(spec, spec.runtime)] if with_runtime else []
    return dump_yaml(*docs, render_trainjob(spec))


class TrainJobBackend(Backend):
    """Trainer v2: conditions Complete/Failed/Suspended, JobSet pods, node rank = index."""

    kind, group, version, plural = KIND, "trainer.kubeflow.org", "v1alpha1", "trainjobs"
    container = CONTAINER

    def render(self, spec: JobSpec) -> dict[str, Any]:
        return render_trainjob(spec)

    def status(self, job: Mapping[str, Any]) -> JobStatus:
        status = job.get("status") or {}
        true = {c.get("type"): c for c in status.get("conditions") or []
                if c.get("status") == "True"}
        for kind, state in (("Failed", "Failed"), ("Complete", "Succeeded"),
                            ("Suspended", "Suspended")):
            if kind in true:
                return JobStatus.of(state, true[kind])
        # No condition says it runs: the JobSet's jobs do (pods active or ready).
        jobs = status.get("jobsStatus") or []
        if any((j.get("active") or 0) + (j.get("ready") or 0) > 0 for j in jobs):
            return JobStatus("Running")
        return JobStatus("Pending")

    def pod_selector(self, name: str) -> str:
        return f"{JOBSET_NAME_LABEL}={name}"

    def rank0_selector(self, name: str) -> str:
        return f"{JOBSET_NAME_LABEL}={name},{REPLICATED_JOB_LABEL}={REPLICATED_JOB},{INDEX_LABEL}=0"

    def rank_of(self, pod: Any) -> str:
        labels = pod.metadata.labels or {}
        index = labels.get(INDEX_LABEL)
        return f"node rank {index}" if index is not None else ""
