"""Train SRS: the DDP training entrypoint, as a PyTorchJob or as torchrun inside this step."""

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
    store_secret: str,
    run_id: str,
    report: Output[HTML],
) -> NamedTuple("Trained", output=str, checkpoint=str):
    """Run ``srs train`` (backend ``pytorchjob``: a Kubeflow PyTorchJob of ``nodes`` pods;
    ``local``: torchrun in this step) and write the training report.

    Returns the training output URI and its best (validation-selected) checkpoint.
    """
    import shlex
    from collections import namedtuple
    from pathlib import Path

    from srs_core import store
    from srs_core.launch import launch_training
    from srs_core.report import training_report

    out = store.join(output_root, "srs")
    settings = {
        "data.stickerchat": stickerchat, "data.sentiment": sentiment,
        "emotion.teacher": teacher, "emotion.anchors": anchors, "train.output": out,
        "train.epochs": epochs, "train.batch_size": batch_size,
    }
    train_args = ["--preset", preset, *shlex.split(overrides),
                  *(f"{key}={value}" for key, value in settings.items())]
    launch_training(train_args, backend=backend, nodes=nodes, gpus_per_node=gpus_per_node,
                    image=job_image, store_secret=store_secret, run_id=run_id)
    Path(report.path).write_text(training_report(out), encoding="utf-8")
    return namedtuple("Trained", "output checkpoint")(out, store.join(out, "best.pt"))
