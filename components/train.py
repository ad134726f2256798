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
    variant: str = "",
) -> NamedTuple("Trained", output=str, checkpoint=str):
    """Run ``srs train`` (``pytorchjob``: a Training Operator PyTorchJob of ``nodes`` pods;
    ``trainjob``: a Trainer v2 TrainJob on the ``srs-torch`` runtime — either created or
    adopted, its rank-0 log streamed here; ``local``: torchrun in this step) and write the report.

    ``queue``: a Kueue LocalQueue ("" = the cluster default SRS_JOB_QUEUE, if any);
    ``priority_class``: a Kueue WorkloadPriorityClass; ``pending_timeout_minutes``: fail when
    the job has not started by then, with the cluster's reasons (0 = only the timeout);
    ``job_owner``: ``step`` makes this step's pod the job's owner (deleted with the run);
    ``variant``: a study's variant ("" = none): each variant of a run gets a job of its own.

    Returns the training output URI and its best (validation-selected) checkpoint.
    """
    import shlex
    from collections import namedtuple
    from pathlib import Path

    from srs_core.artifacts import RunOutputs
    from srs_core.launch.step import run_training
    from srs_core.report import training_report
    from srs_core.tracking import job_env, step_run

    outputs = RunOutputs(output_root).train
    out = outputs.root
    settings = {
        "data.stickerchat": stickerchat, "data.sentiment": sentiment,
        "emotion.teacher": teacher, "emotion.anchors": anchors, "train.output": out,
        "train.epochs": epochs, "train.batch_size": batch_size,
    }
    train_args = ["train", "--preset", preset, *shlex.split(overrides),
                  *(f"{key}={value}" for key, value in settings.items())]
    tracked = step_run(f"train-{variant}" if variant else "train", output_root, run_id,
                       {"srs.checkpoint": outputs.best, "srs.variant": variant})
    with tracked as tracker:  # `srs train` logs into this step's MLflow run
        run_training(
            backend, train_args, run_id=run_id, variant=variant, nodes=nodes,
            gpus_per_node=gpus_per_node, timeout=timeout_hours * 3600 or None,
            image=job_image, cleanup=job_cleanup, secret_name=store_secret,
            checkpoint_uri=out, env=job_env(), queue=queue, priority_class=priority_class,
            pending_timeout_minutes=pending_timeout_minutes, owned_by_step=job_owner == "step")
        Path(report.path).write_text(training_report(out), encoding="utf-8")
        tracker.log_artifact(report.path, "reports")
    return namedtuple("Trained", "output checkpoint")(out, outputs.best)
