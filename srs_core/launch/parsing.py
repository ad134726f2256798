"""The command-line and env syntax of node placement: ``key=value`` lists and kubectl-taint
style tolerations."""

from __future__ import annotations

from srs_core.errors import ConfigError

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def parse_key_values(text: str, where: str = "node selector") -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}``."""
    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where}: expected key=value, got {item!r}")
        result[key] = value
    return result


def parse_toleration(text: str) -> dict[str, str]:
    """kubectl-taint syntax: ``key=value:Effect``, ``key:Effect``, ``key=value`` or ``key``."""
    body, _, effect = text.strip().partition(":")
    key, has_value, value = body.partition("=")
    if not key:
        raise ConfigError(f"toleration {text!r}: expected key[=value][:Effect]")
    toleration = {"key": key, "operator": "Equal" if has_value else "Exists"}
    if has_value:
        toleration["value"] = value
    if effect:
        if effect not in TAINT_EFFECTS:
            raise ConfigError(f"toleration {text!r}: effect must be one of "
                              f"{', '.join(TAINT_EFFECTS)}")
        toleration["effect"] = effect
    return toleration


def parse_tolerations(text: str) -> list[dict[str, str]]:
    """Comma-separated tolerations (``SRS_JOB_TOLERATIONS``)."""
    return [parse_toleration(item) for item in text.split(",") if item.strip()]
