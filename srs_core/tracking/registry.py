"""The model registry (MLflow's): register the selected model with its lineage, and find the
checkpoint and index of a registered version for ``srs deploy``.

A version's ``source`` is a small artifact directory of a run, ``srs-model/`` holding
``srs_model.json`` (checkpoint and index URIs, metrics, config, KFP run id): the weights stay
in the object store where training wrote them (no copy, no second source of truth), and a
``runs:/`` source is accepted by every MLflow store, where a bare local path is not. The same
lineage is on the version as tags (``srs.checkpoint``, ``srs.index``, ``srs.kfp_run_id``,
``metric.<name>``) and in its description.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srs_core.errors import ConfigError
from srs_core.tracking.names import numeric_metrics
from srs_core.tracking.runs import tracked_run
from srs_core.tracking.session import Tracker, _client, tracking_uri, warn_once

log = logging.getLogger(__name__)

POINTER_DIR = "srs-model"
POINTER_FILE = "srs_model.json"
CHECKPOINT_TAG, INDEX_TAG, KFP_TAG = "srs.checkpoint", "srs.index", "srs.kfp_run_id"


def _pointer_run(tracker: Tracker, lineage: Mapping[str, Any]) -> str:
    """Log ``srs-model/srs_model.json`` to the tracker's run; its ``runs:/`` URI ("" if not)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / POINTER_FILE
        path.write_text(json.dumps(lineage, indent=2, default=str), encoding="utf-8")
        tracker.call("uploading the model pointer", "log_artifact", tracker.run_id, str(path),
                     POINTER_DIR)
    return f"runs:/{tracker.run_id}/{POINTER_DIR}" if tracker.enabled else ""


def _version(tracker: Tracker, name: str, source: str, run_id: str,
             tags: Mapping[str, str], description: str) -> str:
    """A new version of ``name`` (the registered model created when it is new)."""
    known = tracker.call("reading the registry", "search_registered_models",
                         f"name = '{name}'")
    if known is not None and not known:
        tracker.call(f"creating registered model {name}", "create_registered_model", name)
    version = tracker.call(f"registering a version of {name}", "create_model_version", name,
                           source, run_id, tags=dict(tags), description=description)
    return str(version.version) if version is not None else ""


def register_model(name: str, checkpoint_uri: str, index_uri: str, metrics: Mapping[str, Any],
                   config: Mapping[str, Any], kfp_run_id: str, run_id: str | None = None,
                   alias: str | None = None, root: str = "") -> str:
    """Register ``checkpoint_uri`` (+ ``index_uri``) as a new version of ``name`` with its
    lineage; ``run_id``: the run the version comes from (else a new ``register`` run);
    ``alias`` (e.g. ``champion``) is set only when given. Returns the version ("" when
    tracking is off or the registry failed: a warning, never an error)."""
    lineage = {"checkpoint": checkpoint_uri, "index": index_uri, "kfp_run_id": kfp_run_id,
               "metrics": dict(metrics), "config": dict(config)}
    tags = {CHECKPOINT_TAG: checkpoint_uri, INDEX_TAG: index_uri, KFP_TAG: kfp_run_id}
    tags |= {f"metric.{key}": f"{value:.6g}" for key, value in numeric_metrics(metrics).items()}
    description = (f"checkpoint {checkpoint_uri}; index {index_uri or '(none)'}; KFP run "
                   f"{kfp_run_id or '(none)'}; metrics and config in {POINTER_DIR}/{POINTER_FILE}")
    uri = tracking_uri(root)
    if run_id:
        tracker = Tracker(_client(uri) if uri else None, run_id, uri)
        return _register(tracker, name, lineage, tags, description, alias)
    with tracked_run(f"register-{name}", root, {"srs.step": "register", KFP_TAG: kfp_run_id},
                     ) as tracker:
        return _register(tracker, name, lineage, tags, description, alias)


def _register(tracker: Tracker, name: str, lineage: Mapping[str, Any],
              tags: Mapping[str, str], description: str, alias: str | None) -> str:
    if not tracker.enabled:
        warn_once("unregistered", "model %s not registered: MLflow tracking is off", name)
        return ""
    source = _pointer_run(tracker, lineage)
    version = _version(tracker, name, source, tracker.run_id, tags, description) if source else ""
    if version and alias:
        tracker.call(f"setting alias {alias}", "set_registered_model_alias", name, alias, version)
    if version:
        log.info("registered %s version %s (%s)", name, version, lineage["checkpoint"])
    return version


def resolve_registered(name: str, version: str = "", alias: str = "",
                       uri: str = "") -> dict[str, str]:
    """``{"name", "version", "checkpoint", "index", "kfp_run_id"}`` of a registered version
    (by number or alias), from the lineage recorded at registration."""
    if bool(version) == bool(alias):
        raise ConfigError(f"registered model {name!r}: give exactly one of --version or --alias")
    uri = uri or tracking_uri()
    client = _client(uri) if uri else None
    if client is None:
        raise ConfigError(f"registered model {name!r}: no MLflow registry (set "
                          "MLFLOW_TRACKING_URI to the server or sqlite:///... that holds it)")
    what = f"registered model {name!r} {'version ' + version if version else 'alias ' + alias}"
    try:
        found = (client.get_model_version(name, version) if version
                 else client.get_model_version_by_alias(name, alias))
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{what} at {uri}: {reason}") from None
    tags = found.tags or {}
    if not tags.get(CHECKPOINT_TAG):
        raise ConfigError(f"{what}: no {CHECKPOINT_TAG} tag (not registered by srs)")
    return {"name": name, "version": str(found.version), "checkpoint": tags[CHECKPOINT_TAG],
            "index": tags.get(INDEX_TAG, ""), "kfp_run_id": tags.get(KFP_TAG, "")}
