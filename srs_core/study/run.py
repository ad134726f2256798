"""A study as a pipeline runs it: its variants as pipeline items, each variant's own settings.

The study pipeline takes its variants as one list parameter, each item ``{"name": ...,
"overrides": "section.key=value ..."}`` (:func:`pipeline_items`). Each variant writes under
``<output_root>/variants/<slug>/`` (:func:`variant_root`) and trains with the run's overrides
followed by its own (:func:`variant_run`), so a variant's setting wins over the run's; its
``train.epochs`` / ``train.batch_size`` win over the pipeline's ``epochs`` / ``batch_size``.

A study shares the upstream steps (teacher, anchors, sentiment) between its variants and
selects on validation, so a variant may not change the ``emotion`` section (set it for the
whole study) and the run may not select on test (``eval.protocol=paper``).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from srs_core import store
from srs_core.config import Config, load_config
from srs_core.errors import ConfigError
from srs_core.study.variants import Study, check_name

VARIANTS_DIR = "variants"
SHARED_SECTIONS = ("emotion",)  # built once per study by the upstream steps


def slug(name: str) -> str:
    """A variant's name as a path and Kubernetes name: ``full/seed1`` -> ``full-seed1``."""
    return name.replace("/", "-")


def variant_root(output_root: str, name: str) -> str:
    """Where variant ``name`` writes: ``<output_root>/variants/<slug>``."""
    return store.join(output_root, VARIANTS_DIR, slug(name))


def pipeline_items(study: Study) -> list[dict[str, str]]:
    """The study pipeline's ``variants`` parameter: ``[{"name", "overrides"}, ...]``."""
    return [{"name": v.name, "overrides": shlex.join(v.args())} for v in study.variants]


def check_study_config(cfg: Config, where: str) -> None:
    """Refuse a configuration that selects on test: a study selects on validation only."""
    if cfg.eval.protocol == "paper":
        raise ConfigError(f"{where}: eval.protocol=paper selects best.pt on the test split; a "
                          "study selects on validation only (use eval.protocol=strict)")


def check_shared(args: list[str], where: str) -> None:
    """Refuse a variant setting of a section that the study's shared steps build once."""
    for arg in args:
        key = arg.partition("=")[0]
        if key.partition(".")[0] in SHARED_SECTIONS:
            raise ConfigError(f"{where}: {key} is built once for the whole study by the shared "
                              "steps; set it for every variant with --param overrides=...")


@dataclass(frozen=True)
class VariantRun:
    """What one variant's steps take: its name, output root, overrides, epochs, batch size."""

    name: str
    output_root: str
    overrides: str
    epochs: int
    batch_size: int


def variant_run(item: Mapping[str, Any], output_root: str, preset: str, overrides: str,
                epochs: int, batch_size: int) -> VariantRun:
    """A ``variants`` item resolved against the run's settings, validated as a whole config."""
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
        raise ConfigError(f"study variant {item!r}: expected {{'name': ..., 'overrides': ...}}")
    name = item["name"]
    where = f"study variant {name!r}"
    check_name(name.split("/seed", 1)[0], where)
    try:
        own = shlex.split(str(item.get("overrides") or ""))
    except ValueError as exc:
        raise ConfigError(f"{where}: overrides: {exc}") from None
    check_shared(own, where)
    if any(arg.startswith("train.output=") for arg in own):
        raise ConfigError(f"{where}: train.output is not a variant setting (each variant "
                          "writes under the study's output root)")
    run = shlex.split(overrides)
    cfg = load_config([], run, preset=preset)
    check_study_config(cfg, "study")
    mine = load_config([], [*run, *own], preset=preset)
    check_study_config(mine, where)
    keys = {arg.partition("=")[0] for arg in own}
    return VariantRun(
        name=name, output_root=variant_root(output_root, name),
        overrides=shlex.join([*run, *own]),
        epochs=mine.train.epochs if "train.epochs" in keys else epochs,
        batch_size=mine.train.batch_size if "train.batch_size" in keys else batch_size)
