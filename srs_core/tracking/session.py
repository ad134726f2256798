"""One MLflow run per step, or nothing: where runs go, and calls that never break a run.

Where (:func:`tracking_uri`): ``SRS_TRACKING=off`` turns tracking off; else
``MLFLOW_TRACKING_URI`` when set (a server, as KFP's MLflow plugin or a user sets it, or
``sqlite:///...``); else, for a local output root and the full ``mlflow`` package, an embedded
store ``sqlite:///<root>/mlflow.db`` with artifacts in ``<root>/mlartifacts``.

Which run (:func:`start_run`): ``SRS_TRACKING_RUN_ID`` names an existing run to log into (a
step hands its run to the ``srs train`` it launches); else a new run, nested under
``SRS_TRACKING_PARENT_RUN_ID`` or, on a cluster with KFP's MLflow plugin, under the task's run
that the plugin puts in ``MLFLOW_RUN_ID``; in ``MLFLOW_EXPERIMENT_ID``/``_NAME`` (default
``srs``) or the parent's experiment.

Never breaking a run: HTTP calls are bounded (:data:`HTTP_LIMITS`), every call is guarded, and
the first failure logs ONE warning and turns tracking off for the rest of the process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srs_core import store
from srs_core.tracking.names import lineage_tags, numeric_metrics, params_of

log = logging.getLogger(__name__)

OFF_ENV = "SRS_TRACKING"  # off | 0 | false | no
RUN_ENV = "SRS_TRACKING_RUN_ID"
PARENT_ENV = "SRS_TRACKING_PARENT_RUN_ID"
PLUGIN_RUN_ENV = "MLFLOW_RUN_ID"  # KFP's MLflow plugin: the task's nested run
URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "srs"
# Our calls wait at most ~10 s per request and retry once (MLflow's defaults: 120 s, 7 retries).
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
_warned: set[str] = set()


def warn_once(key: str, message: str, *args: Any) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def tracking_off() -> bool:
    """Whether ``SRS_TRACKING`` switches tracking off."""
    return os.environ.get(OFF_ENV, "").strip().lower() in {"off", "0", "false", "no"}


def has_sql_store() -> bool:
    """Whether the full ``mlflow`` (SQLAlchemy, alembic) is here, not only ``mlflow-skinny``."""
    return all(importlib.util.find_spec(name) for name in ("sqlalchemy", "alembic", "mlflow"))


def tracking_uri(root: str = "") -> str:
    """Where this process tracks ("" = nowhere; see the module doc)."""
    if tracking_off():
        return ""
    if os.environ.get(URI_ENV):
        return os.environ[URI_ENV]
    if not root or store.local_path(root) is None:
        return ""  # a remote output root has no local default
    if not has_sql_store():
        warn_once("skinny", "MLflow tracking skipped: no %s set and only mlflow-skinny is "
                  "installed (the embedded SQLite store needs the full mlflow package)", URI_ENV)
        return ""
    return f"sqlite:///{store.local_path(root).resolve() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a SQLite store keeps artifacts: ``mlartifacts`` beside it."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None  # a server decides (--artifacts-destination)


class Tracker:
    """One MLflow run, or nothing (no client): every call is guarded, the first failure turns
    it off with one warning."""

    def __init__(self, client: Any = None, run_id: str = "", uri: str = "",
                 owned: bool = False) -> None:
        self.client, self.run_id, self.uri, self.owned = client, run_id, uri, owned

    @property
    def enabled(self) -> bool:
        """Whether calls still reach MLflow."""
        return self.client is not None

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<method>(*args)``; None (and tracking off) when it fails."""
        if self.client is None:
            return None
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking never breaks a run
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            warn_once("failed", "MLflow tracking at %s: %s failed (%s); tracking is off for "
                      "the rest of this process, the run goes on", self.uri, what, text)
            self.client = None
            return None

    def log_params(self, config: Mapping[str, Any]) -> None:
        """The (nested) config as ``section.key`` params."""
        from mlflow.entities import Param

        if not self.enabled:
            return
        params = [Param(key, value) for key, value in sorted(params_of(config).items())]
        for start in range(0, len(params), 100):  # MLflow's limit per batch
            self.call("logging params", "log_batch", self.run_id, params=params[start:start + 100])

    def log_metrics(self, values: Mapping[str, Any], step: int | None = None,
                    prefix: str = "") -> None:
        """The finite numbers of ``values`` (nested keys joined by ``_``) at ``step``."""
        from mlflow.entities import Metric

        if not self.enabled:
            return
        now = int(time.time() * 1000)
        found = numeric_metrics(values, prefix).items()
        metrics = [Metric(key, value, now, step or 0) for key, value in found
                   if math.isfinite(value)]
        for start in range(0, len(metrics), 1000):
            self.call("logging metrics", "log_batch", self.run_id,
                      metrics=metrics[start:start + 1000])

    def log_record(self, record: Mapping[str, Any]) -> None:
        """One ``history.jsonl`` line: its numbers as metrics at its ``step``."""
        self.log_metrics({k: v for k, v in record.items() if k != "step"}, record.get("step"))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags (empty values left out)."""
        for key, value in tags.items():
            if value not in (None, ""):
                self.call(f"tagging {key}", "set_tag", self.run_id, key, str(value))

    def log_artifact(self, uri: str, artifact_path: str | None = None) -> None:
        """A file (local path or store URI) as an artifact; a missing file is skipped."""
        if not self.enabled:
            return
        try:
            path = store.fetch(uri) if store.exists(uri) else None
        except Exception as exc:  # noqa: BLE001 - a missing report never breaks a run
            log.info("not logging artifact %s: %s", uri, exc)
            return
        if path is not None:
            self.call(f"uploading {Path(path).name}", "log_artifact", self.run_id, str(path),
                      artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ended when this process created it."""
        if self.owned:
            self.call("ending the run", "set_terminated", self.run_id, status)


def _client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri`` with bounded HTTP calls; None without mlflow."""
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        warn_once("missing", "MLflow tracking skipped: mlflow is not installed")
        return None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(tracker: Tracker, parent: str) -> str | None:
    """The experiment of a new run: the parent's, ``MLFLOW_EXPERIMENT_ID``, or by name."""
    if parent:
        run = tracker.call("reading the parent run", "get_run", parent)
        return run.info.experiment_id if run else None
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    found = tracker.call("finding the experiment", "get_experiment_by_name", name)
    if found is not None or not tracker.enabled:
        return found.experiment_id if found else None
    with contextlib.suppress(Exception):  # another step may create it at the same moment
        return tracker.client.create_experiment(name, artifact_location(tracker.uri))
    found = tracker.call("creating the experiment", "get_experiment_by_name", name)
    return found.experiment_id if found else None


def start_run(name: str, root: str = "", tags: Mapping[str, Any] | None = None,
              parent: str = "") -> Tracker:
    """The run this process logs to (see the module doc); a disabled Tracker when none."""
    uri = tracking_uri(root)
    client = _client(uri) if uri else None
    if client is None:
        return Tracker()
    tracker = Tracker(client, uri=uri)
    if os.environ.get(RUN_ENV) and not parent:
        tracker.run_id = os.environ[RUN_ENV]
        tracker.set_tags(lineage_tags(tags))
        return tracker
    parent = parent or os.environ.get(PARENT_ENV) or os.environ.get(PLUGIN_RUN_ENV, "")
    experiment = experiment_id(tracker, parent)
    run_tags = lineage_tags(tags) | ({"mlflow.parentRunId": parent} if parent else {})
    run = None if experiment is None else tracker.call(
        "creating a run", "create_run", experiment, tags=run_tags, run_name=name)
    if run is None:
        return Tracker()
    tracker.run_id, tracker.owned = run.info.run_id, True
    log.info("MLflow run %s (%s) at %s", run.info.run_id, name, uri)
    return tracker
