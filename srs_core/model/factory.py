"""Building the selector from its config, checked against the vocabulary it will read."""

from __future__ import annotations

from srs_core.config import ModelConfig
from srs_core.errors import ConfigError
from srs_core.model.selector import SrsModel


def build_model(model_cfg: ModelConfig, num_anchor_logits: int, vocab_size: int) -> SrsModel:
    """A randomly initialised :class:`SrsModel` (its construction draws from torch's RNG)."""
    if vocab_size > model_cfg.vocab_size:
        raise ConfigError(
            f"the vocabulary has {vocab_size} tokens but model.vocab_size is "
            f"{model_cfg.vocab_size}; raise model.vocab_size"
        )
    return SrsModel(model_cfg, num_anchor_logits=num_anchor_logits)
