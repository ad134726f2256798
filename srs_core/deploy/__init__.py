"""Serve a trained model with KServe: render the InferenceService of one checkpoint and its
library index, keep it with the run, and optionally create or update it and wait for Ready.

- :mod:`.manifest`: :func:`inference_service`, the object (validated against KServe's CRD);
- :mod:`.apply`: :func:`apply_inference_service`, bounded API calls and the wait for Ready.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from srs_core import store
from srs_core.artifacts import RunOutputs
from srs_core.deploy.apply import (
    DeployError,
    DeployOutcome,
    InferenceServices,
    apply_inference_service,
    current_namespace,
    ready_state,
    updated,
)
from srs_core.deploy.manifest import DEFAULT_NAME, Resources, inference_service
from srs_core.deploy.registered import label_value, registered_model
from srs_core.errors import ConfigError
from srs_core.launch.schema import dump_yaml
from srs_core.launch.spec import RUN_ID_LABEL

log = logging.getLogger(__name__)

DEPLOY_MODES = ("none", "render", "apply")  # the pipeline's `deploy` parameter


def deploy_model(mode: str, checkpoint: str, index: str, output_root: str, image: str, *,
                 name: str = DEFAULT_NAME, namespace: str = "", wait_seconds: float = 900.0,
                 run_id: str = "", configuration: Any = None,
                 labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``render``: write the InferenceService of ``checkpoint`` + ``index`` to the run's
    ``RunOutputs(output_root).inference_service``; ``apply``: then create or update it and
    wait for Ready.

    ``namespace`` "" is the one this pod runs in; ``labels`` are added to the object's (e.g.
    :func:`registered_model`'s). Returns ``{"manifest_uri", "yaml",
    "outcome"}`` (``outcome``: :class:`DeployOutcome` as a dict, ``None`` for ``render``).
    """
    if mode not in DEPLOY_MODES[1:]:
        raise ConfigError(f"deploy={mode!r}: use one of {', '.join(DEPLOY_MODES[1:])} (or "
                          "none, which deploys nothing)")
    labels = {**({RUN_ID_LABEL: run_id} if run_id else {}), **(labels or {})}
    manifest = inference_service(name, namespace or current_namespace(), image, checkpoint,
                                 index, labels=labels)
    text = dump_yaml(manifest)
    uri = RunOutputs(output_root).inference_service
    store.write_text(uri, text)
    log.info("rendered InferenceService %s to %s", name, uri)
    outcome = None
    if mode == "apply":
        outcome = apply_inference_service(manifest, configuration,
                                          wait_seconds=wait_seconds).as_dict()
    return {"manifest_uri": uri, "yaml": text, "outcome": outcome}


__all__ = [
    "DEPLOY_MODES", "DeployError", "DeployOutcome", "InferenceServices", "Resources",
    "apply_inference_service", "current_namespace", "deploy_model", "inference_service",
    "label_value", "ready_state", "registered_model", "updated",
]
