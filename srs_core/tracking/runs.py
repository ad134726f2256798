"""Runs of the project's steps: the active run, ``srs train``/``srs evaluate``, and the
pipeline's parent run with one nested run per step."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from srs_core import store
from srs_core.artifacts import TrainOutputs
from srs_core.config import Config
from srs_core.tracking.names import lineage_tags
from srs_core.tracking.session import (
    PARENT_ENV,
    PLUGIN_RUN_ENV,
    RUN_ENV,
    URI_ENV,
    Tracker,
    _client,
    experiment_id,
    start_run,
    tracking_uri,
)

_active = Tracker()
TRAIN_SUMMARY = ("steps", "epochs", "best_MAP", "seconds", "dialogs_per_s", "train_dialogs",
                 "selection_dialogs", "world_size", "global_batch")


def active() -> Tracker:
    """The run this process logs to now (a disabled Tracker outside :func:`tracked_run`)."""
    return _active


def log_record(record: Mapping[str, Any]) -> None:
    """One training-history line as metrics of the active run (nothing when there is none)."""
    _active.log_record(record)


def output_parent(uri: str) -> str:
    """The directory holding a local output (``<out>`` of ``<out>/srs``); "" when remote."""
    path = store.local_path(uri) if uri else None
    return str(path.resolve().parent) if path is not None else ""


@contextlib.contextmanager
def tracked_run(name: str, root: str = "", tags: Mapping[str, Any] | None = None,
                parent: str = "") -> Iterator[Tracker]:
    """The active run while the block runs (its id and URI in the environment, for the
    processes it starts); ended FINISHED, FAILED or KILLED (preempted, interrupted)."""
    global _active
    tracker = start_run(name, root, tags, parent)
    previous, saved = _active, {key: os.environ.get(key) for key in (RUN_ENV, URI_ENV)}
    if tracker.enabled:
        _active = tracker
        os.environ[RUN_ENV], os.environ[URI_ENV] = tracker.run_id, tracker.uri
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except BaseException as exc:
        if not isinstance(exc, Exception) or type(exc).__name__ == "Preempted":
            status = "KILLED"
        raise
    finally:
        tracker.end(status)
        _active = previous
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def data_tags(cfg: Config) -> dict[str, str]:
    """Lineage tags of a config: its data and emotion inputs."""
    return {"srs.data.stickerchat": cfg.data.stickerchat, "srs.data.sentiment": cfg.data.sentiment,
            "srs.emotion.teacher": cfg.emotion.teacher, "srs.emotion.anchors": cfg.emotion.anchors}


def track_training(cfg: Config, train: Callable[[Config], dict]) -> dict:
    """``train(cfg)`` as a run (rank 0 only): the config as params, every history line as
    metrics by step (through :func:`log_record`), the summary, history and summary files."""
    if os.environ.get("RANK", "0") != "0":
        return train(cfg)
    outputs = TrainOutputs(cfg.train.output)
    tags = {**data_tags(cfg), "srs.step": "train", "srs.train_output": cfg.train.output,
            "srs.checkpoint": outputs.best}
    with tracked_run("train", output_parent(cfg.train.output), tags) as tracker:
        tracker.log_params(cfg.to_dict())
        summary = train(cfg)
        tracker.log_metrics({key: summary[key] for key in TRAIN_SUMMARY if key in summary},
                            summary.get("steps"), prefix="summary_")
        tracker.log_artifact(outputs.summary)
        tracker.log_artifact(outputs.history)
    return summary


def log_evaluation(tracker: Tracker, results: Mapping[str, Any], out_uri: str, split: str,
                   checkpoint: str, reports: tuple[str, ...] = ()) -> None:
    """Final metrics under both protocols (named as ``srs evaluate`` names them, mapped by
    :func:`~srs_core.tracking.names.metric_name`), ``metrics.json`` and the reports."""
    tracker.set_tags({"srs.split": split, "srs.checkpoint": checkpoint, "srs.eval_output": out_uri})
    tracker.log_metrics(results)
    tracker.log_artifact(store.join(out_uri, "metrics.json"))
    for report in reports:
        tracker.log_artifact(report, "reports")


def track_evaluation(cfg: Config, checkpoint: str, split: str, out_uri: str,
                     evaluate: Callable[[], dict]) -> dict:
    """``evaluate()`` as a run: the config as params, the results and files it wrote."""
    tags = {**data_tags(cfg), "srs.step": "evaluate"}
    with tracked_run(f"evaluate-{split}", output_parent(out_uri), tags) as tracker:
        tracker.log_params(cfg.to_dict())
        results = evaluate()
        log_evaluation(tracker, results, out_uri, split, checkpoint)
    return results


def pipeline_parent(kfp_run_id: str, root: str) -> str:
    """The parent run of a pipeline run, found by its ``srs.kfp_run_id`` tag or created; ""
    when KFP's MLflow plugin made the parent (steps then nest under ``MLFLOW_RUN_ID``)."""
    if os.environ.get(PARENT_ENV) or os.environ.get(PLUGIN_RUN_ENV) or not kfp_run_id:
        return os.environ.get(PARENT_ENV, "")
    uri = tracking_uri(root)
    tracker = Tracker(_client(uri) if uri else None, uri=uri)
    experiment = experiment_id(tracker, "") if tracker.enabled else None
    if experiment is None:
        return ""
    query = f"tags.`srs.kfp_run_id` = '{kfp_run_id}' and tags.`srs.role` = 'pipeline'"

    def first_parent() -> str:
        found = tracker.call("finding the pipeline run", "search_runs", [experiment], query,
                             order_by=["attributes.start_time ASC"])
        earliest = min(found or [], key=lambda r: (r.info.start_time, r.info.run_id),
                       default=None)
        return earliest.info.run_id if earliest else ""

    if found := first_parent():
        return found
    tags = lineage_tags({"srs.role": "pipeline", "srs.kfp_run_id": kfp_run_id,
                         "srs.output_root": root})
    run = tracker.call("creating the pipeline run", "create_run", experiment, tags=tags,
                       run_name=f"pipeline-{kfp_run_id}")
    if run is None:
        return ""
    # Steps that start together (a study's variants) may each have created one: all keep the
    # earliest, and a loser deletes its own.
    chosen = first_parent() or run.info.run_id
    if chosen != run.info.run_id:
        tracker.call("dropping a duplicate pipeline run", "delete_run", run.info.run_id)
    return chosen


@contextlib.contextmanager
def step_run(step: str, output_root: str, kfp_run_id: str = "",
             tags: Mapping[str, Any] | None = None) -> Iterator[Tracker]:
    """A pipeline step's run, nested under the pipeline run's parent (:func:`pipeline_parent`)."""
    root = str(Path(output_root)) if store.local_path(output_root) is not None else output_root
    parent = pipeline_parent(kfp_run_id, root)
    all_tags = {"srs.step": step, "srs.kfp_run_id": kfp_run_id, **(tags or {})}
    with tracked_run(step, root, all_tags, parent=parent) as tracker:
        yield tracker


def end_pipeline_run(kfp_run_id: str, root: str, status: str = "FINISHED") -> None:
    """Mark the pipeline's parent run ended (its last tracked step calls this)."""
    parent = pipeline_parent(kfp_run_id, root) if not os.environ.get(PLUGIN_RUN_ENV) else ""
    if parent:
        uri = tracking_uri(root)
        Tracker(_client(uri), parent, uri, owned=True).end(status)


def job_env() -> dict[str, str]:
    """What a training job's pods need to log into the active run (its URI and id); nothing
    for a local SQLite store, which pods cannot reach."""
    if not _active.enabled or _active.uri.startswith("sqlite:"):
        return {}
    return {URI_ENV: _active.uri, RUN_ENV: _active.run_id}
