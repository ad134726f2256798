"""Build a Kubeflow Training Operator v1 PyTorchJob for SRS training, and check it against the CRD.

The job runs ``torchrun -m srs_core.cli <train args>`` in a Master pod and ``workers - 1`` Worker
pods. torchrun takes its topology from the environment the Training Operator (1.8/1.9) injects
into every replica: ``PET_NNODES`` (= number of replicas, no elastic policy), ``PET_NPROC_PER_NODE``
(= ``spec.nprocPerNode``), ``PET_NODE_RANK`` (Master 0, Worker i -> i + 1), ``PET_MASTER_ADDR`` /
``PET_MASTER_PORT`` and ``MASTER_ADDR`` / ``MASTER_PORT`` (the master's Service and the container
port named ``pytorchjob-port``); torchrun reads every ``PET_<OPTION>`` as the default of its
``--<option>`` flag (``torch.distributed.argparse_util.env``), so the command carries no topology.
The operator also sets ``WORLD_SIZE`` (replicas x nprocPerNode) and ``RANK`` (node rank), which
torchrun overwrites per process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from srs_core.launch.backend import Backend, JobStatus
from srs_core.launch.schema import SCHEMAS, dump_yaml, to_dict, validate_object
from srs_core.launch.spec import (
    JobSpec,
    job_labels,
    object_metadata,
    pod_template,
)

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator injects its env into the container of this name
PORT_NAME = "pytorchjob-port"
CRD_PATH = SCHEMAS / "kubeflow.org_pytorchjobs.yaml"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"  # set by the Training Operator on its pods
JOB_ROLE_LABEL = "training.kubeflow.org/job-role"


def build_pytorchjob(spec: JobSpec):
    """The job as a ``kubeflow.training.KubeflowOrgV1PyTorchJob`` model (validated spec)."""
    from kubeflow.training import models as kf
    from kubernetes import client as k8s

    spec.validate()
    template = pod_template(spec, job_labels(spec), CONTAINER, PORT_NAME)
    replicas = {"Master": kf.KubeflowOrgV1ReplicaSpec(
        replicas=1, restart_policy="OnFailure", template=template)}
    if spec.workers > 1:
        replicas["Worker"] = kf.KubeflowOrgV1ReplicaSpec(
            replicas=spec.workers - 1, restart_policy="OnFailure", template=template)
    meta = object_metadata(spec)
    owners = [k8s.V1OwnerReference(api_version=o["apiVersion"], kind=o["kind"], name=o["name"],
                                   uid=o["uid"], controller=o["controller"],
                                   block_owner_deletion=o["blockOwnerDeletion"])
              for o in meta.get("ownerReferences", [])]
    return kf.KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=k8s.V1ObjectMeta(name=spec.name, namespace=spec.namespace,
                                  labels=meta["labels"], annotations=meta.get("annotations"),
                                  owner_references=owners or None),
        spec=kf.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(spec.processes_per_worker),
            pytorch_replica_specs=replicas,
            run_policy=kf.KubeflowOrgV1RunPolicy(
                backoff_limit=spec.backoff_limit,
                clean_pod_policy="Running",  # free GPUs of peers at the end, keep logs of pods
                ttl_seconds_after_finished=spec.ttl_seconds_after_finished,
                active_deadline_seconds=spec.active_deadline_seconds,
                # Behind Kueue the job waits suspended until its queue admits it (Kueue's
                # webhook would suspend it too; creating it so leaves no window for pods).
                suspend=True if spec.queue_name else None,
            ),
        ),
    )


def render_pytorchjob(spec: JobSpec) -> dict[str, Any]:
    """Build, serialise and validate against the CRD: the manifest as a dict."""
    manifest = to_dict(build_pytorchjob(spec))
    validate_pytorchjob(manifest)
    return manifest


def render_yaml(spec: JobSpec) -> str:
    """The validated PyTorchJob as YAML (what ``srs job render`` prints)."""
    return dump_yaml(render_pytorchjob(spec))


def pytorchjob_schema(crd_path: str = str(CRD_PATH), strict: bool = True) -> dict[str, Any]:
    """``openAPIV3Schema`` of the CRD's v1 version (strict: unknown fields are errors)."""
    from srs_core.launch.schema import crd_schema

    return crd_schema(crd_path, "v1", strict)


def validate_pytorchjob(manifest: Mapping[str, Any], crd_path: str | os.PathLike | None = None,
                        strict: bool = True) -> None:
    """Raise ConfigError listing every violation of the PyTorchJob CRD schema."""
    validate_object(manifest, crd_path or CRD_PATH, "v1", strict)


class PyTorchJobBackend(Backend):
    """Training Operator v1: Master + Workers, conditions Created/Running/Restarting/..."""

    kind, group, version, plural = KIND, "kubeflow.org", "v1", "pytorchjobs"
    container = CONTAINER

    def render(self, spec: JobSpec) -> dict[str, Any]:
        return render_pytorchjob(spec)

    def status(self, job: Mapping[str, Any]) -> JobStatus:
        """Failed/Succeeded win; else the newest true condition; no condition yet: Pending."""
        conditions = [c for c in (job.get("status") or {}).get("conditions") or []
                      if c.get("status") == "True"]
        for terminal in ("Failed", "Succeeded"):
            for condition in conditions:
                if condition.get("type") == terminal:
                    return JobStatus.of(terminal, condition)
        if conditions:
            newest = conditions[-1]
            state = {"Created": "Pending"}.get(newest.get("type"), newest.get("type"))
            return JobStatus.of(state, newest)
        return JobStatus("Pending")

    def pod_selector(self, name: str) -> str:
        return f"{JOB_NAME_LABEL}={name}"

    def rank0_selector(self, name: str) -> str:
        return f"{JOB_NAME_LABEL}={name},{JOB_ROLE_LABEL}=master"

    def rank_of(self, pod: Any) -> str:
        labels = pod.metadata.labels or {}
        kind = labels.get("training.kubeflow.org/replica-type", "")
        index = labels.get("training.kubeflow.org/replica-index", "")
        return f"{kind.capitalize()} {index}".strip()
