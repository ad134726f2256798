"""Experiment tracking and the model registry, in MLflow; never a reason for a run to fail.

- :mod:`.names`: MLflow names of our metrics (``R10@1`` -> ``R10_at_1``, the one rule),
  config params (``section.key``) and lineage tags (KFP ids, git commit, data URIs).
- :mod:`.session`: where runs go (``SRS_TRACKING=off``, ``MLFLOW_TRACKING_URI``, else
  ``sqlite:///<out>/mlflow.db``), :class:`Tracker` (guarded, bounded calls), :func:`start_run`.
- :mod:`.runs`: the active run, ``srs train``/``srs evaluate`` as runs, the pipeline's parent
  run and its nested step runs.
- :mod:`.registry`: :func:`register_model` (a version with lineage, alias when asked) and
  :func:`resolve_registered` (what ``srs deploy --registered-model`` serves).
"""

from srs_core.tracking.names import flatten, lineage_tags, metric_name, numeric_metrics, params_of
from srs_core.tracking.registry import register_model, resolve_registered
from srs_core.tracking.runs import (
    active,
    end_pipeline_run,
    job_env,
    log_evaluation,
    log_record,
    output_parent,
    pipeline_parent,
    step_run,
    track_evaluation,
    track_training,
    tracked_run,
)
from srs_core.tracking.session import (
    OFF_ENV,
    PARENT_ENV,
    RUN_ENV,
    Tracker,
    start_run,
    tracking_uri,
)

__all__ = [
    "OFF_ENV", "PARENT_ENV", "RUN_ENV", "Tracker", "active", "end_pipeline_run", "flatten",
    "job_env",
    "lineage_tags", "log_evaluation", "log_record", "metric_name", "numeric_metrics",
    "output_parent", "params_of", "pipeline_parent", "register_model", "resolve_registered",
    "start_run", "step_run", "track_evaluation", "track_training", "tracked_run",
    "tracking_uri",
]
