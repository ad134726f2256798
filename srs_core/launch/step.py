"""Training as a pipeline step runs it: torchrun in the step, or a job on the cluster."""

from __future__ import annotations

import os
from collections.abc import Mapping

from srs_core.launch.client import run_job, run_pytorchjob
from srs_core.launch.kube import step_owner
from srs_core.launch.local import run_local
from srs_core.launch.spec import JobSpec, job_name


def run_training(
    backend: str,
    train_args: list[str],
    *,
    run_id: str,
    variant: str = "",
    nodes: int = 1,
    gpus_per_node: int = 1,
    timeout: float | None = None,
    image: str = "",
    cleanup: str = "",
    secret_name: str = "",
    checkpoint_uri: str = "",
    env: Mapping[str, str] | None = None,
    queue: str = "",
    priority_class: str = "",
    pending_timeout_minutes: float = 0.0,
    owned_by_step: bool = False,
) -> None:
    """``srs <train_args>`` on ``backend``: ``local`` (torchrun here, one process per GPU, one
    on a CPU), ``trainjob`` or ``pytorchjob`` (a job of ``nodes`` pods named after the run and
    ``variant``, with the cluster defaults from ``SRS_JOB_*`` in this step's environment)."""
    if backend == "local":
        run_local(train_args, nproc=max(1, gpus_per_node), timeout=timeout)
        return
    spec = JobSpec.from_env(
        os.environ, name=job_name("srs-train", f"{run_id}-{variant}" if variant else run_id),
        image=image, train_args=train_args, workers=nodes, gpus_per_worker=gpus_per_node,
        secret_name=secret_name, run_id=run_id, checkpoint_uri=checkpoint_uri,
        env=dict(env or {}), queue_name=queue or None, priority_class=priority_class or None,
        owner=step_owner(os.environ) if owned_by_step else None,
    )
    extra = {"pending_timeout": pending_timeout_minutes * 60} if pending_timeout_minutes else {}
    if backend == "trainjob":
        run_job(spec, kind="trainjob", timeout=timeout, cleanup=cleanup, **extra)
    else:
        run_pytorchjob(spec, timeout=timeout, cleanup=cleanup, **extra)
