"""The sweep form of a study file: grid or random search over named config keys.

::

    sweep:
      method: grid | random     # required
      trials: 20                # random: required (1..256); grid: not allowed (the product)
      seed: 0                   # random: the RNG seed (default 0), so a sweep is reproducible
      parallelism: 2            # trials at once (Katib parallelTrialCount; default 1)
      parameters:               # section.key -> one of:
        train.batch_size: {values: [4, 8, 16]}          # a list (grid: required)
        train.lr: {min: 1.0e-5, max: 1.0e-3, scale: log} # random only: a range, scale
        loss.simclr_weight: {min: 0.1, max: 1.0}          #   linear (default) or log

Grid: the cartesian product of the ``values`` lists, in file order (the last key varies
fastest), at most :data:`~srs_core.study.variants.MAX_VARIANTS` points. Random: ``trials``
draws from ``random.Random(seed)``, parameters in file order; a list is a uniform choice, a
range of an ``int`` setting gives integers, a ``float`` range is rounded to 6 significant
digits (clamped into the range); ``log`` draws the logarithm uniformly and needs ``min > 0``.
Trials are named ``sweep-000``, ``sweep-001``, ...; every trial and both ends of every range are
checked against the configuration like any variant.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from srs_core.config import Config
from srs_core.errors import ConfigError
from srs_core.study.variants import MAX_VARIANTS, Variant, check_overrides

METHODS = ("grid", "random")
SCALES = ("linear", "log")
SWEEP_KEYS = ("method", "trials", "seed", "parallelism", "parameters")
PARAMETER_KEYS = ("values", "min", "max", "scale")


@dataclass(frozen=True)
class Parameter:
    """One swept setting: a list of ``values``, or a ``min``..``max`` range on a ``scale``."""

    key: str  # section.key
    kind: type  # the setting's type in Config: int, float, bool or str
    values: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    scale: str = "linear"

    def draw(self, rng: random.Random) -> Any:
        """One random value (a list: uniform choice; a range: uniform on its scale)."""
        if self.values is not None:
            return rng.choice(self.values)
        lo, hi = float(self.min), float(self.max)
        if self.scale == "log":
            x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        else:
            x = rng.uniform(lo, hi)
        if self.kind is int:
            return min(max(round(x), int(self.min)), int(self.max))
        return min(max(float(f"{x:.6g}"), lo), hi)


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its method, trial count, RNG seed, parallelism and parameters."""

    method: str
    parameters: tuple[Parameter, ...]
    trials: int | None = None  # random only
    seed: int = 0
    parallelism: int = 1

    @property
    def size(self) -> int:
        """How many trials the sweep runs (grid: the product of the lists)."""
        if self.method == "grid":
            return math.prod(len(p.values) for p in self.parameters)
        return int(self.trials)

    def points(self) -> list[dict[str, Any]]:
        """Each trial's settings in order (random: reproducible from ``seed``)."""
        if self.method == "grid":
            keys = [p.key for p in self.parameters]
            return [dict(zip(keys, combo, strict=True))
                    for combo in itertools.product(*(p.values for p in self.parameters))]
        rng = random.Random(self.seed)
        return [{p.key: p.draw(rng) for p in self.parameters} for _ in range(self.size)]

    def variants(self) -> list[Variant]:
        """The trials as variants ``sweep-000``, ``sweep-001``, ..."""
        return [Variant(f"sweep-{i:03d}", point) for i, point in enumerate(self.points())]


def _setting_type(key: str, where: str) -> type:
    """The type of setting ``section.key`` in :class:`Config` (unknown: a ConfigError)."""
    section, _, name = key.partition(".")
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}
    if section not in sections:
        raise ConfigError(f"{where}: unknown section {section!r} (known: {', '.join(sections)})")
    hints = {k: v for k, v in typing.get_type_hints(sections[section]).items()
             if typing.get_origin(v) is not typing.ClassVar}
    if name not in hints:
        known = ", ".join(hints)
        raise ConfigError(f"{where}: unknown key {key} (known: {known})")
    return hints[name]


def _count(data: Mapping[str, Any], key: str, where: str, low: int, default: int | None,
           high: int | None = None) -> int | None:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high):
        upper = f" to {high}" if high is not None else " or more"
        raise ConfigError(f"{where}.{key}: expected an integer from {low}{upper}, got {value!r}")
    return value


def _parameter(key: Any, spec: Any, method: str, where: str, preset: str | None,
               base: Sequence[str]) -> Parameter:
    here = f"{where}.parameters.{key}"
    if not isinstance(key, str) or key.count(".") != 1:
        raise ConfigError(f"{here}: key must look like section.key")
    kind = _setting_type(key, here)
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"{here}: expected {{values: [...]}} or {{min: .., max: ..}}")
    unknown = [str(k) for k in spec if k not in PARAMETER_KEYS]
    if unknown:
        raise ConfigError(f"{here}: unknown key {unknown[0]!r} (known: "
                          f"{', '.join(PARAMETER_KEYS)})")
    if "values" in spec:
        return _listed(key, kind, spec, here, preset, base)
    if method == "grid":
        raise ConfigError(f"{here}: a grid needs values: [...] for every parameter")
    return _ranged(key, kind, spec, here, preset, base)


def _listed(key: str, kind: type, spec: Mapping[str, Any], here: str, preset: str | None,
            base: Sequence[str]) -> Parameter:
    values = spec["values"]
    if len(spec) > 1:
        raise ConfigError(f"{here}: values: excludes min/max/scale")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{here}.values: expected a non-empty list")
    for value in values:
        check_overrides({key: value}, f"{here}.values", preset, base)
    if len({repr(v) for v in values}) < len(values):
        raise ConfigError(f"{here}.values: a value is listed twice")
    return Parameter(key, kind, values=tuple(values))


def _ranged(key: str, kind: type, spec: Mapping[str, Any], here: str, preset: str | None,
            base: Sequence[str]) -> Parameter:
    if kind not in (int, float):
        raise ConfigError(f"{here}: {key} is a {kind.__name__}: give values: [...]")
    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{here}: a range needs both min: and max:")
    scale = spec.get("scale", "linear")
    if scale not in SCALES:
        raise ConfigError(f"{here}.scale: {scale!r} is not one of {', '.join(SCALES)}")
    ends = {}
    for end in ("min", "max"):
        value = spec[end]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{here}.{end}: {key} is an integer setting, got {value!r}")
        check_overrides({key: value}, f"{here}.{end}", preset, base)
        ends[end] = int(value) if kind is int else float(value)
    if not ends["min"] < ends["max"]:
        raise ConfigError(f"{here}: min {ends['min']} must be below max {ends['max']}")
    if scale == "log" and ends["min"] <= 0:
        raise ConfigError(f"{here}: a log scale needs min > 0, got {ends['min']}")
    return Parameter(key, kind, min=ends["min"], max=ends["max"], scale=scale)


def parse_sweep(data: Any, where: str = "sweep", preset: str | None = None,
                base: Sequence[str] = ()) -> Sweep:
    """A study file's ``sweep:`` mapping as a validated :class:`Sweep` (see the docstring)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with method: and parameters:")
    unknown = [str(k) for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(SWEEP_KEYS)})")
    method = data.get("method")
    if method not in METHODS:
        raise ConfigError(f"{where}.method: expected one of {', '.join(METHODS)}, got "
                          f"{method!r}")
    trials = _count(data, "trials", where, 1, None, MAX_VARIANTS)
    if method == "random" and trials is None:
        raise ConfigError(f"{where}.trials: a random sweep needs trials: N")
    if method == "grid" and trials is not None:
        raise ConfigError(f"{where}.trials: a grid runs every point of its values lists; "
                          "drop trials:")
    parameters = data.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        raise ConfigError(f"{where}.parameters: expected a non-empty mapping of section.key "
                          "to its values or range")
    params = tuple(_parameter(key, spec, method, where, preset, base)
                   for key, spec in parameters.items())
    sweep = Sweep(method, params, trials, _count(data, "seed", where, 0, 0),
                  _count(data, "parallelism", where, 1, 1, MAX_VARIANTS))
    if sweep.size > MAX_VARIANTS:
        raise ConfigError(f"{where}: the grid has {sweep.size} points, above the cap of "
                          f"{MAX_VARIANTS}; list fewer values")
    for trial in sweep.variants():  # the rules between settings hold for whole points only
        check_overrides(trial.overrides, f"{where}: trial {trial.name} "
                        f"({' '.join(trial.args())})", preset, base)
    return sweep
