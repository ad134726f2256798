"""The rules a configuration's values obey, whatever their source (preset, file, override).

:mod:`srs_core.config` applies them: :func:`coerce` to each value as it is set, :data:`CHOICES`
to the settings that name one of a few modes, :func:`validate` to the whole configuration once
it is built, and :func:`safe_load_unique` to read its YAML files. :func:`check_run_parameters`
judges a pipeline run's parameters (re-exported by :mod:`srs_core.config`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from srs_core.errors import ConfigError

if TYPE_CHECKING:
    from srs_core.config import Config

CHOICES = {
    ("train", "precision"): ("auto", "fp32", "bf16"),
    ("train", "augment"): ("auto", "loader", "device"),
    ("emotion", "precision"): ("auto", "fp32", "bf16"),
    ("emotion", "kmeans_backend"): ("auto", "kmcuda", "cpu"),
    ("loss", "hard_negative_scale"): ("paper", "temperature"),
    ("train", "weight_decay_rule"): ("paper", "exempt_embeddings"),
    ("train", "lr_schedule"): ("paper", "cosine_per_step"),
    ("train", "lr_scaling"): ("none", "linear", "sqrt"),
    ("eval", "protocol"): ("strict", "paper"),
    ("model", "attention"): ("sdpa", "eager"),
    ("train", "compile"): ("none", "default", "reduce-overhead", "max-autotune"),
    ("emotion", "memory_format"): ("auto", "channels_last", "contiguous"),
    ("train", "on_settings_change"): ("refuse", "restart_schedule"),
}


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; ints are accepted for floats."""
    hint = annotation
    if isinstance(hint, str):
        hint = {"str": str, "int": int, "float": float, "bool": bool}.get(hint, hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "2e-4" (no dot) as a string; accept any Python float literal.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if hint in (str, int, float, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


# Range rules, checked for every configuration whatever its source. Every float must also be
# finite. Numbers not listed may be any value of their type.
_POSITIVE = {
    "data": ("max_text_tokens",),
    "model": ("image_size", "patch_size", "vision_width", "vision_depth", "vision_heads",
              "text_width", "text_heads", "text_intermediate", "vocab_size", "max_position",
              "embed_dim", "temperature", "simclr_hidden", "simclr_dim"),
    "loss": ("simclr_temperature",),
    "train": ("epochs", "batch_size", "lr", "checkpoint_every", "log_every",
              "warmup_step_iterations", "grad_accumulation", "keep_checkpoints"),
    "emotion": ("image_size", "epochs", "batch_size", "lr", "k", "kmeans_iterations"),
    "eval": ("batch_size", "paper_evals_per_epoch"),
}
_NON_NEGATIVE = {
    "data": ("max_dialogs",),
    "model": ("text_layers", "fusion_layers"),
    "loss": ("simclr_weight", "emotion_weight"),
    "train": ("warmup_epochs", "global_batch_size", "min_lr", "warmup_lr", "weight_decay",
              "grad_clip", "num_workers", "seed", "max_steps"),
    "emotion": ("weight_decay", "num_workers", "seed"),
}
_NON_EMPTY = {"data": ("stickerchat",), "train": ("output",), "emotion": ("ser30k",)}


def validate(cfg: Config) -> None:
    """Ranges, finiteness and the rules between settings; raises :class:`ConfigError`."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for key, value in dataclasses.asdict(values).items():
            name = f"{section.name}.{key}"
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
            if key in _POSITIVE.get(section.name, ()) and value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
            if key in _NON_NEGATIVE.get(section.name, ()) and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
            if key in _NON_EMPTY.get(section.name, ()) and not str(value).strip():
                raise ConfigError(f"{name} must not be empty")
    m = cfg.model
    if m.image_size % m.patch_size:
        raise ConfigError(f"model.image_size {m.image_size} is not a multiple of model.patch_size")
    if m.vision_width % m.vision_heads or m.text_width % m.text_heads:
        raise ConfigError("model widths must be multiples of their head counts")
    if cfg.data.max_text_tokens < 2:
        raise ConfigError("data.max_text_tokens must be at least 2 ([CLS] and one token)")
    if cfg.train.min_lr > cfg.train.lr:
        raise ConfigError(f"train.min_lr {cfg.train.min_lr} is above train.lr {cfg.train.lr}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the
    last one silently, so a typo'd copy of a setting would win without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line "
                    f"{seen[key]})"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`ConfigError` on duplicate mapping keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


EVAL_SPLITS = ("val", "test")  # the training split is never reported as an evaluation result


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML errors point at the text over several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_config_file(path: str | Path) -> Any:
    """A config file's YAML content; anything wrong with it is one :class:`ConfigError` line
    naming the file (unreadable, not UTF-8, not YAML, duplicate keys, nested too deeply)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}"
            f"{'; it starts with a UTF-16 byte-order mark' if utf16 else ''}); save it as "
            "UTF-8") from None
    try:
        return safe_load_unique(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {one_line(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config (a config is sections "
                          "of settings: section -> key -> value)") from None


def check_run_parameters(
    *,
    preset: str,
    overrides: str,
    anchors_k: int,
    epochs: int,
    batch_size: int,
    train_nodes: int,
    gpus_per_node: int,
    eval_split: str,
    train_timeout_hours: float,
    sentiment_workers: int,
) -> Config:
    """The pipeline's run parameters under the config's rules, before any step does work.

    Returns the configuration the training step will build; raises :class:`ConfigError`
    naming the first bad parameter.
    """
    import shlex

    from srs_core.config import load_config

    try:
        words = shlex.split(overrides)
    except ValueError as exc:
        raise ConfigError(f"parameter overrides={overrides!r}: {exc}") from None
    settings = [f"emotion.k={anchors_k}", f"train.epochs={epochs}",
                f"train.batch_size={batch_size}"]
    cfg = load_config([], [*words, *settings], preset=preset)
    counts = {"train_nodes": train_nodes, "gpus_per_node": gpus_per_node}
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"parameter {name} must be at least 1, got {value}")
    if sentiment_workers < 0:
        raise ConfigError(f"parameter sentiment_workers must be >= 0 (0 = all cores), got "
                          f"{sentiment_workers}")
    if not (math.isfinite(train_timeout_hours) and train_timeout_hours > 0):
        raise ConfigError(f"parameter train_timeout_hours must be > 0, got {train_timeout_hours}")
    if eval_split not in EVAL_SPLITS:
        raise ConfigError(f"parameter eval_split must be one of {', '.join(EVAL_SPLITS)}, got "
                          f"{eval_split!r} (the training split is never an evaluation result)")
    return cfg
