"""Serving a registered model: its checkpoint and index from the MLflow registry, and the
labels that name it on the InferenceService."""

from __future__ import annotations

import re

from srs_core.tracking import resolve_registered

REGISTERED_MODEL_LABEL = "srs-kubeflow/registered-model"
MODEL_VERSION_LABEL = "srs-kubeflow/model-version"
_INVALID = re.compile(r"[^A-Za-z0-9._-]+")


def label_value(text: str) -> str:
    """``text`` as a valid Kubernetes label value: ``[A-Za-z0-9._-]``, at most 63 characters,
    starting and ending alphanumeric (other characters become ``-``)."""
    return _INVALID.sub("-", text)[:63].strip("-._")


def registered_model(name: str, version: str = "", alias: str = "",
                     uri: str = "") -> tuple[str, str, dict[str, str]]:
    """The checkpoint, index and labels of registered model ``name`` at ``version`` or
    ``alias`` (the lineage recorded at registration)."""
    found = resolve_registered(name, version=version, alias=alias, uri=uri)
    labels = {REGISTERED_MODEL_LABEL: label_value(name),
              MODEL_VERSION_LABEL: label_value(found["version"])}
    return found["checkpoint"], found["index"], labels
