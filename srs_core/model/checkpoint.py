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
        """Read a ``best.pt`` (the optional keys of older ones get their defaults)."""
        state: dict[str, Any] = load_torch(uri)
        return cls(
            model=state["model"], model_config=ModelConfig(**state["model_config"]),
            vocab=state["vocab"], num_anchor_logits=state["num_anchor_logits"],
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
