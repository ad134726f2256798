"""Initialise the selector from in-memory pretrained state dicts (never from paths).

- :func:`load_albef_vision`: ALBEF's ``ALBEF.pth`` (``visual_encoder.*``; ``visual_encoder_m.*``,
  the momentum copy, is skipped), with ``pos_embed`` resized to the model's patch grid.
- :func:`load_bert_text`: a Hugging Face ``bert-base-chinese`` state dict (``bert.`` prefix
  optional). Layers ``0..text_layers-1`` go to the text encoder, the next ``fusion_layers`` to
  the fusion layers' self-attention and feed-forward; their cross-attention stays random and
  is listed as missing.

Both return a :class:`LoadReport` and raise :class:`ConfigError` on a shape mismatch;
:func:`load_checked` is the shared step (the emotion teacher's loader uses it too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from srs_core.errors import ConfigError
from srs_core.model.selector import SrsModel, unwrap
from srs_core.model.vision import interpolate_pos_embed


@dataclass
class LoadReport:
    """What a loader did; key names are the model's (``missing``) or the checkpoint's."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys left as initialised
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place
    ignored: int = 0  # checkpoint keys outside this loader's part of the model

    def as_dict(self) -> dict:
        return {"source": self.source, "loaded": len(self.loaded), "missing": self.missing,
                "unexpected": self.unexpected, "ignored": self.ignored}

    def __str__(self) -> str:
        def first(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")

        text = (f"{self.source}: loaded {len(self.loaded)} tensors, {len(self.missing)} missing, "
                f"{len(self.unexpected)} unexpected, {self.ignored} ignored")
        if self.missing:
            text += f"; missing: {first(self.missing)}"
        if self.unexpected:
            text += f"; unexpected: {first(self.unexpected)}"
        return text


def _model_state(checkpoint: Mapping) -> Mapping[str, torch.Tensor]:
    """The state dict itself, whether given bare or as ``checkpoint["model"]``."""
    inner = checkpoint.get("model")
    return inner if isinstance(inner, Mapping) else checkpoint


def load_checked(
    module: nn.Module,
    mapped: dict[str, tuple[str, torch.Tensor]],
    report: LoadReport,
    scope: tuple[str, ...] = ("",),
) -> LoadReport:
    """Copy ``mapped`` (model key -> (checkpoint key, tensor)) into ``module`` after checks.

    ``scope``: prefixes of the model keys this loader is responsible for (for ``missing``).
    """
    target = module.state_dict()
    selected = {}
    for key, (source_key, value) in mapped.items():
        if key not in target:
            report.unexpected.append(source_key)
            continue
        if tuple(getattr(value, "shape", ())) != tuple(target[key].shape):
            raise ConfigError(
                f"{report.source}: checkpoint key {source_key!r} has shape "
                f"{list(getattr(value, 'shape', []))} "
                f"but the model's {key!r} has shape {list(target[key].shape)}; make the model "
                "config (widths, depths, vocab_size, max_position, patch_size) match the "
                "checkpoint"
            )
        selected[key] = value
    module.load_state_dict(selected, strict=False)
    report.loaded = sorted(selected)
    report.missing = sorted(
        k for k in target if k not in selected and k.startswith(scope)
    )
    return report


def _named(source: str, what: str) -> str:
    """``"<uri> (what)"``, or ``what`` when the caller gave no URI: how errors name the file."""
    return f"{source} ({what})" if source else what


def _mapping(checkpoint: object, source: str, expected: str) -> None:
    if not isinstance(checkpoint, Mapping):
        raise ConfigError(f"{_named(source, 'checkpoint')}: holds a "
                          f"{type(checkpoint).__name__}, not a state dict; expected {expected}")


def load_albef_vision(model: nn.Module, checkpoint: Mapping, source: str = "") -> LoadReport:
    """Load ALBEF's ``visual_encoder.*`` into an ``SrsModel`` (or a bare vision encoder).

    ``source``: the checkpoint's URI, named by every error."""
    model = unwrap(model)
    vision = model.vision if isinstance(model, SrsModel) else model
    _mapping(checkpoint, source, "ALBEF.pth")
    report = LoadReport(_named(source, "ALBEF visual_encoder"))
    prefix = "visual_encoder."
    mapped = {}
    for key, value in _model_state(checkpoint).items():
        if key.startswith(prefix):
            mapped[key[len(prefix):]] = (key, value)
        else:  # visual_encoder_m.* (momentum copy), text_encoder.*, heads, queues
            report.ignored += 1
    if not mapped:
        raise ConfigError(
            f"{source or 'the vision checkpoint'}: no 'visual_encoder.*' keys; expected "
            "ALBEF.pth (checkpoint['model'] with ALBEF's key names)"
        )
    if "pos_embed" in mapped:
        key, pos_embed = mapped["pos_embed"]
        if pos_embed.ndim == 3 and pos_embed.shape[1] != vision.pos_embed.shape[1]:
            resized = interpolate_pos_embed(
                pos_embed, vision.patch_embed.num_patches, vision.num_prefix_tokens
            )
            mapped["pos_embed"] = (key, resized)
    return load_checked(vision, mapped, report)


_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")


def _bert_name(key: str) -> str:
    """HF key without ``bert.``; old checkpoints' LayerNorm ``gamma``/``beta`` renamed."""
    name = key.removeprefix("bert.")
    if ".LayerNorm." in name:
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))
    return name


def load_bert_text(model: nn.Module, checkpoint: Mapping, source: str = "") -> LoadReport:
    """Load a Hugging Face BERT state dict into the text and fusion encoders.

    ``source``: the checkpoint's URI, named by every error."""
    model = unwrap(model)
    if not isinstance(model, SrsModel):
        raise ConfigError(f"load_bert_text needs an SrsModel, got {type(model).__name__}")
    _mapping(checkpoint, source, "a Hugging Face bert-base-chinese state dict")
    text_layers, fusion_layers = model.cfg.text_layers, model.cfg.fusion_layers
    report = LoadReport(_named(source, "BERT text encoder"))
    mapped = {}
    for key, value in _model_state(checkpoint).items():
        name = _bert_name(key)
        match = _LAYER.fullmatch(name)
        if name.startswith("embeddings.") and not name.endswith("position_ids"):
            mapped["text." + name] = (key, value)
        elif match:
            index, rest = int(match.group(1)), match.group(2)
            if index < text_layers:
                mapped[f"text.layer.{index}.{rest}"] = (key, value)
            elif index < text_layers + fusion_layers:
                mapped[f"fusion.layer.{index - text_layers}.{rest}"] = (key, value)
            else:
                report.unexpected.append(key)
        else:  # pooler, MLM/NSP heads (cls.*), position_ids buffers
            report.ignored += 1
    if not mapped:
        raise ConfigError(
            f"{source or 'the text checkpoint'}: no BERT keys ('bert.embeddings.*', "
            "'bert.encoder.layer.*'); expected a Hugging Face bert-base-chinese state dict"
        )
    return load_checked(model, mapped, report, scope=("text.", "fusion."))
