"""Train SRS: the DDP training entrypoint, as a PyTorchJob, a TrainJob, or torchrun in the step."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Output

from components._image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_srs(
    stickerchat: str,
    sentiment: str,
    teacher: str,
    anchors: str,
    output_root: str,
    preset: str,
    overrides: str,
    epochs: int,
    batch_size: int,
    backend: str,
    nodes: int,
    gpus_per_node: int,
    job_image: str,
    job_cleanup: str,
    timeout_hours: float,
    store_secret: str,
    run_id: str,
    report: Output[HTML],
    queue: str = "",
    priority_class: str = "",
    pending_timeout_minutes: float = 0.0,
    job_owner: str = "none",
) -> NamedTuple("Trained", output=str, checkpoint=str):
    """Run ``srs train`` (``pytorchjob``: a Training Operator PyTorchJob of ``nodes`` pods;
    ``trainjob``: a Trainer v2 TrainJob on the ``srs-torch`` runtime — either created or
    adopted, its rank-0 log streamed here; ``local``: torchrun in this step) and write the report.

    ``queue``: a Kueue LocalQueue ("" = the cluster default SRS_JOB_QUEUE, if any);
    ``priority_class``: a Kueue WorkloadPriorityClass; ``pending_timeout_minutes``: fail when
    the job has not started by then, with the cluster's reasons (0 = only the timeout);
    ``job_owner``: ``step`` makes this step's pod the job's owner (deleted with the run).

    Returns the training output URI and its best (validation-selected) checkpoint.
    """
    import os
    import shlex
    from collections import namedtuple
    from pathlib import Path

    from srs_core import launch
    from srs_core.artifacts import RunOutputs
    from srs_core.launch import JobSpec, job_name, run_local, step_owner
    from srs_core.report import training_report

    outputs = RunOutputs(output_root).train
    out = outputs.root
    settings = {
        "data.stickerchat": stickerchat, "data.sentiment": sentiment,
        "emotion.teacher": teacher, "emotion.anchors": anchors, "train.output": out,
        "train.epochs": epochs, "train.batch_size": batch_size,
    }
    train_args = ["train", "--preset", preset, *shlex.split(overrides),
                  *(f"{key}={value}" for key, value in settings.items())]
    timeout = timeout_hours * 3600 or None
    if backend == "local":
        run_local(train_args, nproc=max(1, gpus_per_node), timeout=timeout)  # 0 GPUs: 1 CPU
    else:
        # Cluster defaults (namespace, node selector, tolerations, ...) arrive as SRS_JOB_* env.
        spec = JobSpec.from_env(
            os.environ, name=job_name("srs-train", run_id), image=job_image,
            train_args=train_args, workers=nodes, gpus_per_worker=gpus_per_node,
            secret_name=store_secret, run_id=run_id, checkpoint_uri=out,
            queue_name=queue or None, priority_class=priority_class or None,
            owner=step_owner(os.environ) if job_owner == "step" else None,
        )
        extra = {"pending_timeout": pending_timeout_minutes * 60} if pending_timeout_minutes else {}
        if backend == "trainjob":
            launch.run_job(spec, kind="trainjob", timeout=timeout, cleanup=job_cleanup, **extra)
        else:
            launch.run_pytorchjob(spec, timeout=timeout, cleanup=job_cleanup, **extra)
    Path(report.path).write_text(training_report(out), encoding="utf-8")
    return namedtuple("Trained", "output checkpoint")(out, outputs.best)
