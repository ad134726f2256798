"""Studies: named config variants trained side by side (the ablation table, user files, sweeps).

A :class:`Study` is an ordered list of :class:`Variant` — a name and ``section.key`` overrides
applied on top of the run's configuration (preset, files, the run's own overrides). Every
override is checked against the :class:`~srs_core.config.Config` dataclasses (keys, types,
choices, ranges) when the study is built, so a typo fails before any step runs.

Built-in study ``ablation`` (the paper's rows)::

    full             {}                                   the unchanged configuration
    no-emotion       loss.emotion=false                   no emotion distillation
    no-hard-mining   loss.hard_mining=false               random negatives
    no-polarity      loss.polarity=false                  hard mining on similarity only
    no-simclr-intra  loss.simclr_intra=false
    no-simclr-inter  loss.simclr_inter=false
    no-simclr        both SimCLR terms off

Seeds: ``seeds=N`` (N > 1) repeats every variant N times as ``<name>/seed<i>``, i = 0..N-1,
with ``train.seed`` = base seed + i (base: the variant's own ``train.seed``, else the
configuration's, 42 by default). ``Variant.base`` is the name before ``/``;
``Variant.slug`` replaces ``/`` with ``-`` where a DNS name is needed.

A study file (YAML; a key given twice is an error)::

    seeds: 2                     # optional, default 1
    variants:                    # name -> overrides; `full: {}` is the unchanged config
      full: {}
      no-emotion: {loss.emotion: false}
      long: {train.epochs: 10, train.lr: 3.0e-4}
    sweep:                       # optional; its trials follow the variants (see .sweep)
      method: random
      trials: 8
      seed: 0
      parameters:
        train.lr: {min: 1.0e-5, max: 1.0e-3, scale: log}

Names are 1-40 of ``a-z 0-9 -``, starting and ending with a letter or digit (safe as a path,
a Kubernetes name and an MLflow run name). ``train.output`` is not a variant setting: the study
gives each variant its own output under the study's root. At most :data:`MAX_VARIANTS`
variants, seeds included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from srs_core.config import TrainConfig, load_config, read_config_file
from srs_core.errors import ConfigError

if TYPE_CHECKING:
    from srs_core.study.sweep import Sweep

MAX_VARIANTS = 256
MAX_SEEDS = 32
NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
RESERVED_KEYS = {"train.output": "each variant writes under the study's output root"}
FILE_KEYS = ("seeds", "variants", "sweep")

ABLATION: dict[str, dict[str, Any]] = {
    "full": {},
    "no-emotion": {"loss.emotion": False},
    "no-hard-mining": {"loss.hard_mining": False},
    "no-polarity": {"loss.polarity": False},
    "no-simclr-intra": {"loss.simclr_intra": False},
    "no-simclr-inter": {"loss.simclr_inter": False},
    "no-simclr": {"loss.simclr_intra": False, "loss.simclr_inter": False},
}


def format_value(value: Any) -> str:
    """A value as the YAML text that ``section.key=<text>`` parses back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text[:-3].strip() if text.endswith("\n...") or text.endswith("...") else text


@dataclass(frozen=True)
class Variant:
    """One row of a study: a name, ``section.key`` overrides and, when seeded, its seed."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def base(self) -> str:
        """The variant's name without its ``/seed<i>`` suffix."""
        return self.name.split("/", 1)[0]

    @property
    def slug(self) -> str:
        """The name with ``/`` as ``-`` (for Kubernetes object names)."""
        return self.name.replace("/", "-")

    def settings(self) -> dict[str, Any]:
        """The overrides with ``train.seed`` set when the variant is seeded."""
        seeded = {"train.seed": self.seed} if self.seed is not None else {}
        return {**self.overrides, **seeded}

    def args(self) -> list[str]:
        """The settings as ``section.key=value`` arguments (what ``srs train`` takes)."""
        return [f"{key}={format_value(value)}" for key, value in self.settings().items()]


@dataclass(frozen=True)
class Study:
    """An ordered, validated list of variants (and the sweep it came from, if any)."""

    name: str
    variants: tuple[Variant, ...]
    seeds: int = 1
    sweep: Sweep | None = None  # the file's sweep: Katib renders it as its search space

    @property
    def names(self) -> list[str]:
        """The variants' names in study order."""
        return [v.name for v in self.variants]

    def variant(self, name: str) -> Variant:
        """The variant called ``name``."""
        for v in self.variants:
            if v.name == name:
                return v
        raise ConfigError(f"study {self.name!r} has no variant {name!r} (known: "
                          f"{', '.join(self.names)})")


def check_name(name: Any, where: str) -> str:
    """``name`` if it is a valid variant name, else a :class:`ConfigError` naming ``where``."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"{where}: variant name {name!r} must be 1-40 of a-z 0-9 '-', "
                          "starting and ending with a letter or digit")
    return name


def check_overrides(overrides: Mapping[str, Any], where: str, preset: str | None = None,
                    base: Sequence[str] = ()) -> None:
    """Apply ``overrides`` to the ``preset`` + ``base`` config; raise one-line ConfigErrors."""
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: overrides must be a mapping of section.key: value, got "
                          f"{type(overrides).__name__}")
    for key in overrides:
        if not isinstance(key, str) or key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"{where}: key {key!r} must look like section.key")
        if key in RESERVED_KEYS:
            raise ConfigError(f"{where}: {key} is not a variant setting "
                              f"({RESERVED_KEYS[key]})")
    args = Variant("check", dict(overrides)).args()
    try:
        load_config([], [*base, *args], preset=preset)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def expand_seeds(variants: Iterable[Variant], seeds: int,
                 base_seed: int = TrainConfig.seed) -> list[Variant]:
    """Each variant ``seeds`` times as ``<name>/seed<i>`` with ``train.seed`` = base + i."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"seeds must be an integer from 1 to {MAX_SEEDS}, got {seeds!r}")
    if seeds == 1:
        return list(variants)
    out = []
    for v in variants:
        start = v.overrides.get("train.seed", base_seed) if v.seed is None else v.seed
        out += [replace(v, name=f"{v.name}/seed{i}", seed=int(start) + i) for i in range(seeds)]
    return out


def make_study(name: str, variants: Sequence[Variant], seeds: int = 1,
               sweep: Sweep | None = None,
               where: str = "study", preset: str | None = None,
               base: Sequence[str] = ()) -> Study:
    """Validate names and overrides, expand seeds, enforce the size cap: the :class:`Study`."""
    if not variants:
        raise ConfigError(f"{where}: the study defines no variant")
    base_seed = load_config([], base, preset=preset).train.seed  # the run's own settings
    seen: set[str] = set()
    for v in variants:
        check_name(v.name, where)
        if v.name in seen:
            raise ConfigError(f"{where}: variant {v.name!r} is defined twice")
        seen.add(v.name)
        check_overrides(v.overrides, f"{where}: variants.{v.name}", preset, base)
    expanded = expand_seeds(variants, seeds, base_seed)
    if len(expanded) > MAX_VARIANTS:
        raise ConfigError(f"{where}: {len(expanded)} variants (seeds included) exceed the cap "
                          f"of {MAX_VARIANTS}")
    return Study(name, tuple(expanded), seeds, sweep)


def ablation(seeds: int = 1, preset: str | None = None, base: Sequence[str] = ()) -> Study:
    """The built-in ``ablation`` study: the paper's rows (see the module docstring)."""
    rows = [Variant(name, dict(overrides)) for name, overrides in ABLATION.items()]
    return make_study("ablation", rows, seeds, where="study ablation", preset=preset, base=base)


def _file_seeds(data: Mapping[str, Any], where: str) -> int:
    seeds = data.get("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError(f"{where}: seeds must be an integer from 1 to {MAX_SEEDS}, got "
                          f"{seeds!r}")
    return seeds


def read_study_file(path: str | Path, seeds: int | None = None, preset: str | None = None,
                    base: Sequence[str] = ()) -> Study:
    """A study file's variants, then its sweep's trials (``seeds`` overrides the file's)."""
    from srs_core.study.sweep import parse_sweep

    where = str(path)
    data = read_config_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with variants: and/or sweep: at the top")
    unknown = [str(k) for k in data if k not in FILE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r} (known: "
                          f"{', '.join(FILE_KEYS)})")
    rows = data.get("variants") or {}
    if not isinstance(rows, dict):
        raise ConfigError(f"{where}: variants must map each name to its overrides")
    variants = [Variant(check_name(name, f"{where}: variants"), _mapping(value, where, name))
                for name, value in rows.items()]
    sweep = None
    if data.get("sweep") is not None:
        sweep = parse_sweep(data["sweep"], f"{where}: sweep", preset, base)
        variants += sweep.variants()
    count = seeds if seeds is not None else _file_seeds(data, where)
    return make_study(Path(path).stem, variants, count, sweep, where, preset, base)


def _mapping(value: Any, where: str, name: str) -> dict[str, Any]:
    """A file variant's overrides (empty for ``name:`` or ``name: {}``)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: variants.{name} must be a mapping of section.key: value "
                          f"(use {{}} for the unchanged config), got {type(value).__name__}")
    return dict(value)


def load_study(source: str | Path, seeds: int | None = None, preset: str | None = None,
               base: Sequence[str] = ()) -> Study:
    """``ablation`` or a study file, validated against the ``preset`` + ``base`` config."""
    load_config([], base, preset=preset)  # a bad run setting is named as such, not as a variant's
    if str(source) == "ablation":
        return ablation(1 if seeds is None else seeds, preset, base)
    if not Path(source).is_file():
        raise ConfigError(f"study {str(source)!r} is neither 'ablation' nor a study file")
    return read_study_file(source, seeds, preset, base)
