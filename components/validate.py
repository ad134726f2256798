"""Ingest/validate: check both raw data roots before anything expensive reads them."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate(
    stickerchat: str,
    ser30k: str,
    strict: bool,
    report: Output[Markdown],
    counts: Output[Metrics],
    preset: str = "paper",
    overrides: str = "",
    anchors_k: int = 60,
    epochs: int = 5,
    batch_size: int = 4,
    train_nodes: int = 1,
    gpus_per_node: int = 1,
    eval_split: str = "test",
    train_timeout_hours: float = 72.0,
    sentiment_workers: int = 4,
    training_backend: str = "pytorchjob",
) -> NamedTuple("Validated", stickerchat=str, ser30k=str):
    """Check the run's parameters, then the StickerChat and SER30K roots, then the parameters
    that depend on the data (``anchors_k`` against the SER30K classes, ``batch_size`` against
    the usable training dialogs of each training process, the splits later steps need); fail
    the step when a parameter is out of range or misfits the data, or the data is unusable.

    The roots are passed through unchanged so that every later step depends on this one: the
    data is read in place from the object store (no copy), after it has been checked.
    """
    from collections import namedtuple
    from pathlib import Path

    from srs_core.config import check_run_parameters
    from srs_core.data.validate import validate as validate_roots
    from srs_core.errors import ConfigError, DataError

    cfg = check_run_parameters(
        preset=preset, overrides=overrides, anchors_k=anchors_k, epochs=epochs,
        batch_size=batch_size, train_nodes=train_nodes, gpus_per_node=gpus_per_node,
        eval_split=eval_split, train_timeout_hours=train_timeout_hours,
        sentiment_workers=sentiment_workers,
    )
    result = validate_roots(stickerchat, ser30k, progress=False)
    # local: torchrun with gpus_per_node processes in the step; a job: nodes x GPUs per node
    processes = gpus_per_node * (1 if training_backend == "local" else train_nodes)
    result.check_run(cfg, processes=processes, eval_split=eval_split,
                     names={"emotion.k": "anchors_k", "train.batch_size": "batch_size",
                            "eval_split": "eval_split"})
    text = result.render(strict)
    Path(report.path).write_text(f"# Data validation\n\n```\n{text}\n```\n", encoding="utf-8")
    for problem, count in sorted(result.report.counts.items()):
        counts.log_metric(f"problem_{problem}", count)
    for split, split_counts in result.stickerchat["splits"].items():
        counts.log_metric(f"usable_dialogs_{split}", split_counts["usable"])
    for split, split_counts in result.ser30k["splits"].items():
        counts.log_metric(f"usable_images_{split}", split_counts["usable"])
    code = result.exit_code(strict)
    if code == 1:
        raise DataError(f"data validation failed{' (strict)' if strict else ''}:\n{text}")
    if code:
        raise ConfigError("run parameters do not fit the data (from the validate step's "
                          "counts):\n" + "\n".join(result.parameters))
    return namedtuple("Validated", "stickerchat ser30k")(stickerchat, ser30k)
