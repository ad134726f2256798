"""``best.pt``: a trained selector, self-contained (weights, model config, vocabulary, casing).

This class is the one owner of the format: training writes it, inference reads it, and
evaluation needs nothing but its URI and the data. Keys on disk::

    model              state dict of the SrsModel
    model_config       asdict(ModelConfig)
    vocab              vocabulary text (one token a line)
    num_anchor_logits  size of the emotion head (7 * K)
    step, epoch        where training was when it was selected
    selected_on        e.g. "val (strict protocol)"
    val                the selection split's metrics then
    sticker_cache      URI of the sticker cache training used
    lowercase          the tokenizer's casing
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from srs_core.config import ModelConfig
from srs_core.errors import ConfigError
from srs_core.model.factory import build_model
from srs_core.model.selector import SrsModel
from srs_core.model.tokenizer import ContextTokenizer
from srs_core.runtime.checkpoint import load_torch, save_torch


@dataclass
class BestCheckpoint:
    """The content of a ``best.pt``."""

    model: dict[str, torch.Tensor]
    model_config: ModelConfig
    vocab: str
    num_anchor_logits: int
    # Checkpoints written before the casing was recorded came from a lowercasing tokenizer.
    lowercase: bool = True
    step: int = 0
    epoch: int = 0
    selected_on: str = ""
    val: dict[str, float] = field(default_factory=dict)
    sticker_cache: str = ""

    def save(self, uri: str) -> None:
        """Write it atomically to ``uri`` (any store URI)."""
        save_torch({
            "model": self.model, "model_config": asdict(self.model_config),
            "vocab": self.vocab, "num_anchor_logits": self.num_anchor_logits,
            "step": self.step, "epoch": self.epoch, "selected_on": self.selected_on,
            "val": self.val, "sticker_cache": self.sticker_cache, "lowercase": self.lowercase,
        }, uri)

    @classmethod
    def load(cls, uri: str) -> BestCheckpoint:
        """Read a ``best.pt`` (the optional keys of older ones get their defaults).

        Anything else (an emotion teacher's ``teacher.pth``, a training ``latest.pt``, a
        ``best.pt`` with a missing or unknown key) is a :class:`ConfigError` naming ``uri``.
        """
        state: dict[str, Any] = load_torch(uri)
        _check_best(uri, state)
        try:
            model_config = ModelConfig(**state["model_config"])
        except TypeError as exc:  # a key this version does not know
            raise ConfigError(f"{uri}: model_config of this best.pt does not fit this version "
                              f"of srs ({exc}); re-create it with `srs train`") from None
        return cls(
            model=state["model"], model_config=model_config,
            vocab=state["vocab"], num_anchor_logits=int(state["num_anchor_logits"]),
            lowercase=bool(state.get("lowercase", True)), step=state.get("step", 0),
            epoch=state.get("epoch", 0), selected_on=state.get("selected_on", ""),
            val=state.get("val", {}), sticker_cache=state.get("sticker_cache", ""),
        )

    def tokenizer(self, max_tokens: int) -> ContextTokenizer:
        """The tokenizer the model was trained with, cutting contexts at ``max_tokens``."""
        return ContextTokenizer(self.vocab, max_tokens, lowercase=self.lowercase)

    def build(self, vocab_size: int) -> SrsModel:
        """The model with these weights (on the CPU, in training mode)."""
        model = build_model(self.model_config, self.num_anchor_logits, vocab_size)
        model.load_state_dict(self.model)
        return model


_REQUIRED = {"model": dict, "model_config": dict, "vocab": str, "num_anchor_logits": int}
_HINT = "give the best.pt written by `srs train` (<train.output>/best.pt)"


def _check_best(uri: str, state: Any) -> None:
    """ConfigError naming ``uri`` and what it holds instead, unless it looks like a best.pt."""
    if not isinstance(state, dict):
        raise ConfigError(f"{uri}: not a selector checkpoint (best.pt): it holds a "
                          f"{type(state).__name__}, not a dict of its keys; {_HINT}")
    if state and all(torch.is_tensor(value) for value in state.values()):
        names = sorted(state)
        kind = ("an emotion teacher (teacher.pth from `srs emotion train`) or another bare "
                "ResNet state dict" if any(k.startswith(("conv1.", "layer1.")) for k in names)
                else "a bare state dict")
        raise ConfigError(f"{uri}: not a selector checkpoint (best.pt): it holds {len(names)} "
                          f"bare tensors (e.g. {', '.join(names[:3])}), {kind}; {_HINT}")
    if "model" in state and "optimizer" in state and "model_config" not in state:
        raise ConfigError(f"{uri}: not a selector checkpoint (best.pt): it is a training "
                          f"checkpoint (model and optimizer state, no model config); {_HINT}")
    missing = [key for key in _REQUIRED if key not in state]
    wrong = [f"{key} ({type(state[key]).__name__}, expected {kind.__name__})"
             for key, kind in _REQUIRED.items()
             if key in state and not isinstance(state[key], kind)
             and not (kind is int and isinstance(state[key], int))]
    if missing or wrong:
        found = ", ".join(sorted(map(str, state))[:8]) or "nothing"
        detail = "; ".join(filter(None, [
            f"missing key(s) {', '.join(missing)}" if missing else "",
            f"wrong type of {', '.join(wrong)}" if wrong else ""]))
        raise ConfigError(f"{uri}: not a selector checkpoint (best.pt): {detail} (it holds "
                          f"{found}); {_HINT}")
