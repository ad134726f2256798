"""Typed configuration: one dataclass per concern, presets by name, YAML files and overrides.

A run's configuration is built in three layers, later ones winning:
preset (``tiny`` or ``paper``) -> YAML file(s) -> ``section.key=value`` overrides.
Unknown sections/keys and values of the wrong type are a :class:`ConfigError` that names
the source (file or override) and the key.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srs_core.config_checks import (  # noqa: F401  (check_run_parameters: re-exported)
    CHOICES,
    check_run_parameters,
    coerce,
    one_line,
    read_config_file,
    validate,
)
from srs_core.errors import ConfigError


@dataclass
class DataConfig:
    """Where the StickerChat data and the sentiment step's output live."""

    stickerchat: str = "demo/stickerchat"  # root holding release_*.json and npy_stickers/
    sentiment: str = ""  # root holding <split>.jsonl from `srs sentiment` ("" = no polarity)
    cache: str = ""  # sticker-image cache root ("" = <train.output>/sticker-cache)
    max_dialogs: int = 0  # per split, 0 = all (smoke runs)
    max_text_tokens: int = 512
    strict: bool = False  # fail on the first bad dialog instead of counting skips


@dataclass
class ModelConfig:
    """Sizes of the ALBEF-style selector; `paper` is ViT-B/16 + BERT-base at 128 px."""

    image_size: int = 128
    patch_size: int = 16
    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    text_width: int = 768
    text_layers: int = 6  # text-only layers
    fusion_layers: int = 6  # layers with cross-attention to the image tokens
    text_heads: int = 12
    text_intermediate: int = 3072
    vocab_size: int = 21128
    max_position: int = 512
    embed_dim: int = 256  # shared ITA space
    temperature: float = 0.07
    simclr_hidden: int = 1024
    simclr_dim: int = 256
    vision_init: str = ""  # URI of ALBEF.pth ("" = random init)
    text_init: str = ""  # URI of a Hugging Face bert-base-chinese directory ("" = random init)
    vocab: str = ""  # URI of vocab.txt ("" = <text_init>/vocab.txt, else built from the data)
    # bert-base-chinese is cased; <text_init>/tokenizer_config.json's do_lower_case wins
    lowercase: bool = False
    # sdpa: every attention (text, fusion, vision) through torch's fused kernel; eager: the
    # reference softmax path (same weights and results to ~1e-5, slower)
    attention: str = "sdpa"


@dataclass
class LossConfig:
    """Switches and weights of the PBR losses (each term can be turned off for ablations)."""

    ita: bool = True
    itm: bool = True
    hard_mining: bool = True  # off: negatives drawn uniformly
    polarity: bool = True  # polarity affinity in hard mining
    # paper: text->image draws use the raw cosine, image->text cosine/temperature (the
    # authors' code); temperature: both divided by the temperature (an ablation)
    hard_negative_scale: str = "paper"
    # The authors' PBR code never clamps the learnable temperature; ALBEF clamped it to
    # [0.001, 0.5] every step (true = ALBEF's behaviour).
    clamp_temperature: bool = False
    simclr_intra: bool = True
    simclr_inter: bool = True
    emotion: bool = True
    simclr_temperature: float = 0.1
    simclr_weight: float = 0.5
    emotion_weight: float = 0.5

    # The switches that each turn one term of the loss on (a term's switch is its name).
    TERMS: typing.ClassVar[tuple[str, ...]] = (
        "ita", "itm", "simclr_intra", "simclr_inter", "emotion")

    @property
    def active_terms(self) -> tuple[str, ...]:
        """The loss terms switched on, in :attr:`TERMS` order."""
        return tuple(term for term in self.TERMS if getattr(self, term))


@dataclass
class TrainConfig:
    """The SRS training loop."""

    output: str = "runs/srs"  # URI: checkpoints, metrics, logs
    epochs: int = 5
    warmup_epochs: float = 1.0
    batch_size: int = 4  # dialogs per process
    # Dialogs per optimizer step over all processes; 0 = batch_size x processes. When set, a
    # run on another number of processes is refused. The paper's is 8 (2 GPUs x 4).
    global_batch_size: int = 0
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-5  # the `paper` schedule's warm-up rate
    # paper: the authors' epoch-wise timm cosine (warmup_lr for the first
    # warmup_step_iterations iterations, one value per epoch after); cosine_per_step: linear
    # warm-up over warmup_epochs, then a per-step cosine
    lr_schedule: str = "paper"
    warmup_step_iterations: int = 100
    # none | linear | sqrt: scale lr, min_lr and warmup_lr by (global batch / 8) or its root
    lr_scaling: str = "none"
    weight_decay: float = 0.02
    # paper: decay everything but 1-d parameters and biases (the authors' optimizer);
    # exempt_embeddings: also spare the temperature, cls token and position embeddings
    weight_decay_rule: str = "paper"
    grad_clip: float = 5.0
    checkpoint_every: int = 500  # steps; a checkpoint is also written at every epoch end
    keep_checkpoints: int = 2  # newest kept (both trainers; a damaged newest falls back)
    # a resume whose checkpoint has other data-order/optimisation settings (both trainers):
    # refuse | restart_schedule (its weights, a new schedule from step 0; --restart-schedule)
    on_settings_change: str = "refuse"
    log_every: int = 20
    num_workers: int = 2
    # auto (device on CUDA, else loader) | loader (per image in the workers) | device (batched
    # on the training device; the workers only gather uint8 stickers): where images augment
    augment: str = "auto"
    seed: int = 42
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = no limit)
    # micro-batches of batch_size dialogs per optimizer step (global batch = batch_size x
    # processes x grad_accumulation); steps, schedule and cadences count optimizer steps
    grad_accumulation: int = 1
    # none | default | reduce-overhead | max-autotune: torch.compile mode of the trained module
    compile: str = "none"
    compile_backend: str = "inductor"  # aot_eager: compiled graphs without a C++ compiler


@dataclass
class EmotionConfig:
    """The SER30K emotion teacher and the anchors clustered from its features."""

    ser30k: str = "demo/ser30k"
    teacher: str = ""  # URI of trained teacher weights (input of anchors and SRS training)
    anchors: str = ""  # URI of the [7*K, 2048] anchors .npy
    image_size: int = 128
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    init: str = ""  # URI of timm-format ResNet50 weights to start from
    num_workers: int = 2
    seed: int = 0
    precision: str = "auto"
    # the teacher's convolutions: auto (channels_last on CUDA, contiguous elsewhere) |
    # channels_last | contiguous
    memory_format: str = "auto"
    k: int = 60  # anchors per emotion class
    kmeans_backend: str = "auto"  # auto | kmcuda | cpu
    kmeans_iterations: int = 100


@dataclass
class EvalConfig:
    # Dialogs per scoring batch (x 10 candidate pairs through the fusion encoder). 8 was the
    # fastest on CPU (bench/srs_throughput.py); a GPU wants more.
    batch_size: int = 8
    # strict (ours): checkpoint selected on val MAP, the positive never twice among the
    # candidates, ties ranked against it. paper: the authors' protocol, selection on *test*
    # MAP evaluated paper_evals_per_epoch times per epoch (for comparisons with their tables).
    # `srs evaluate` always reports both protocols.
    protocol: str = "strict"
    paper_evals_per_epoch: int = 8


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    # Small enough to train on 2 CPU cores in minutes; used by tests and the local demo.
    "tiny": {
        "model": {
            "image_size": 32,
            "patch_size": 8,
            "vision_width": 64,
            "vision_depth": 2,
            "vision_heads": 2,
            "text_width": 64,
            "text_layers": 2,
            "fusion_layers": 2,
            "text_heads": 2,
            "text_intermediate": 128,
            "max_position": 128,
            "embed_dim": 32,
            "simclr_hidden": 64,
            "simclr_dim": 32,
        },
        "data": {"max_text_tokens": 128},
        "train": {
            "epochs": 3,
            "batch_size": 8,
            "lr": 5e-4,
            "min_lr": 5e-5,
            "warmup_lr": 5e-5,
            "warmup_step_iterations": 20,
            "checkpoint_every": 50,
            "log_every": 10,
            "num_workers": 0,
        },
        "emotion": {
            "image_size": 32,
            "epochs": 4,
            "batch_size": 32,
            "lr": 2e-3,
            "k": 4,
            "num_workers": 0,
            "kmeans_iterations": 50,
        },
        "eval": {"batch_size": 16},
    },
}


def _apply(cfg: Config, updates: Mapping[str, Any], source: str) -> None:
    if not isinstance(updates, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(updates).__name__}")
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    for section, values in updates.items():
        if section not in sections:
            raise ConfigError(
                f"{source}: unknown section {section!r} (known: {', '.join(sections)})"
            )
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        target = getattr(cfg, section)
        hints = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in hints:
                known = ", ".join(hints)
                raise ConfigError(f"{source}: unknown key {section}.{key} (known: {known})")
            where = f"{source}: {section}.{key}"
            value = coerce(value, hints[key], where)
            choices = CHOICES.get((section, key))
            if choices and value not in choices:
                raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}")
            setattr(target, key, value)


def parse_override(text: str) -> dict[str, dict[str, Any]]:
    """Turn ``section.key=value`` into a nested mapping; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r}: key must look like section.key")
    shown = repr(text) if len(text) <= 80 else repr(text[:77] + "...")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {shown}: value is not valid YAML: {one_line(exc)}") \
            from None
    except RecursionError:
        raise ConfigError(f"override {shown}: value nested too deeply (a setting is a number, "
                          "a string or a flag)") from None
    if value is None:
        value = ""
    return {parts[0]: {parts[1]: value}}


def load_config(
    files: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
    preset: str | None = None,
) -> Config:
    """Build a :class:`Config` from a preset, YAML files and ``section.key=value`` overrides.

    A YAML file may name its own preset with a top-level ``preset:`` key; ``preset`` wins.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    file_preset = None
    for path in files:
        loaded = read_config_file(path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        file_preset = loaded.pop("preset", file_preset)
        layers.append((str(path), loaded))
    chosen = preset or file_preset or "paper"
    if chosen not in PRESETS:
        raise ConfigError(f"unknown preset {chosen!r} (known: {', '.join(PRESETS)})")
    cfg = Config()
    _apply(cfg, PRESETS[chosen], f"preset {chosen}")
    for source, values in layers:
        _apply(cfg, values, source)
    for text in overrides:
        _apply(cfg, parse_override(text), f"override {text!r}")
    validate(cfg)
    return cfg
