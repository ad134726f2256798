"""Check a rendered job object against its vendored CRD schema before it reaches a cluster.

The API server validates custom objects against the CRD's ``openAPIV3Schema`` and silently
prunes unknown fields; here unknown fields are errors too (strict), so a typo in a field name
fails at render time instead of vanishing. The vendored CRDs live in ``schemas/``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from srs_core.errors import ConfigError

SCHEMAS = Path(__file__).with_name("schemas")


def to_dict(model: Any) -> dict[str, Any]:
    """A plain JSON-able dict of a model object (what the API server receives)."""
    if hasattr(model, "model_dump"):  # pydantic models (kubeflow_trainer_api)
        return model.to_dict() if hasattr(model, "to_dict") else model.model_dump(
            by_alias=True, exclude_none=True)
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(model)


class _PlainDumper(yaml.SafeDumper):
    """No ``&id001`` anchors: shared sub-objects are written out in full, as kubectl does."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(*manifests: Mapping[str, Any]) -> str:
    """One or more objects as a YAML stream (what ``srs job render`` prints)."""
    return yaml.dump_all([dict(m) for m in manifests], Dumper=_PlainDumper, sort_keys=False,
                         default_flow_style=False)


def _strict(schema: Any) -> Any:
    """Forbid unknown fields wherever the CRD lists properties (the API server prunes them)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(crd_path: str, version: str, strict: bool = True) -> dict[str, Any]:
    """``openAPIV3Schema`` of the CRD's ``version`` (strict: unknown fields are errors)."""
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        crd = yaml.load(Path(crd_path).read_text(encoding="utf-8"), Loader=loader)
        schema = next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]
                      if v["name"] == version)
    except (OSError, KeyError, StopIteration, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{crd_path}: not a CRD with a {version} openAPIV3Schema "
                          f"({exc})") from exc
    return _strict(schema) if strict else schema


def validate_object(manifest: Mapping[str, Any], crd_path: str | os.PathLike, version: str,
                    strict: bool = True) -> None:
    """Raise ConfigError listing every violation of the CRD schema (the first ten)."""
    import jsonschema

    schema = crd_schema(str(crd_path), version, strict)
    validator = jsonschema.Draft4Validator(schema)
    errors = sorted(validator.iter_errors(dict(manifest)), key=lambda e: list(e.absolute_path))
    if errors:
        name = manifest.get("metadata", {}).get("name", "?")
        kind = manifest.get("kind", "object")
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                 for e in errors[:10]]
        raise ConfigError(f"{kind} {name!r} does not match the CRD schema "
                          f"({len(errors)} problem(s)):\n" + "\n".join(lines))
