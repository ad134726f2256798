"""What a run records, named for MLflow: metric names, flattened params, lineage tags."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# MLflow accepts letters, digits and ``_ - . / space`` in a metric name. The one rule: ``@``
# becomes ``_at_`` (``R10@1`` -> ``R10_at_1``, ``paper_R10@1`` -> ``paper_R10_at_1``); any
# other refused character becomes ``_``. Prefixes such as ``paper_`` and ``val_`` are kept.
_REFUSED = re.compile(r"[^A-Za-z0-9_\-./ ]")
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value (characters)
COMMIT_ENV = "SRS_GIT_COMMIT"  # set at image build time; else `git rev-parse HEAD`
# Where lineage comes from: tag name -> environment variable (set by KFP, the launcher or us).
ENV_TAGS = {
    "kfp.run_id": "SRS_RUN_ID", "kfp.pod_name": "KFP_POD_NAME", "kfp.pod_uid": "KFP_POD_UID",
    "kfp.mlflow_task_run_id": "MLFLOW_RUN_ID",
}


def metric_name(name: str) -> str:
    """The MLflow name of one of our metrics: ``@`` -> ``_at_``, other refused chars -> ``_``."""
    return _REFUSED.sub("_", name.replace("@", "_at_"))


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``section.key`` -> value (``{"train": {"lr": 1}}`` -> ``train.lr``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def params_of(config: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params of a resolved config: ``section.key`` -> its value as text (bounded)."""
    return {key: str(value)[:MAX_PARAM_VALUE] for key, value in flatten(config).items()}


def numeric_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a (nested) record as MLflow metrics, named by :func:`metric_name`;
    nested keys join with ``_`` (``{"val": {"MAP": x}}`` -> ``val_MAP``)."""
    found: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found |= numeric_metrics(value, f"{name}_")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[metric_name(name)] = float(value)
    return found


def git_commit() -> str:
    """The project's commit: ``$SRS_GIT_COMMIT`` (images), else ``git rev-parse``, else ""."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).resolve().parent, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def lineage_tags(extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Tags every run carries: project version and commit, KFP ids from the environment, and
    ``extra`` (data, checkpoint URIs...); empty values are left out."""
    from srs_core import __version__

    tags = {"srs.version": __version__, "mlflow.source.git.commit": git_commit()}
    tags |= {tag: os.environ.get(var, "") for tag, var in ENV_TAGS.items()}
    tags |= {key: str(value) for key, value in (extra or {}).items()}
    return {key: value for key, value in tags.items() if value}
