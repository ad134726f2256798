"""Analytic FLOP count of the selector, for model-FLOPs utilisation (MFU) figures.

Counts matrix multiplications only (2 FLOPs per multiply-add); norms, softmax, activations and
the small heads are left out, as is the frozen emotion teacher. A transformer layer of width
``D``, feed-forward width ``I`` and ``L`` tokens costs ``8LD^2`` (Q, K, V, output projections)
``+ 4L^2 D`` (scores and weighted values) ``+ 4LDI`` (feed-forward). A fusion layer adds a
cross-attention of ``T`` text queries over ``L`` image tokens: ``4TD^2 + 4L Dv D + 4TLD``.
Training is counted as 3x the forward pass (the backward pass costs about twice the forward).
"""

from __future__ import annotations

from srs_core.config import ModelConfig
from srs_core.data.candidates import NUM_CANDIDATES


def _layer(tokens: int, width: int, ffn: int) -> float:
    return 8 * tokens * width**2 + 4 * tokens**2 * width + 4 * tokens * width * ffn


def image_flops(cfg: ModelConfig) -> float:
    """Forward FLOPs of the ViT on one image."""
    patches = (cfg.image_size // cfg.patch_size) ** 2
    embed = 2 * patches * 3 * cfg.patch_size**2 * cfg.vision_width
    return embed + cfg.vision_depth * _layer(patches + 1, cfg.vision_width, 4 * cfg.vision_width)


def text_flops(cfg: ModelConfig, text_tokens: int) -> float:
    """Forward FLOPs of the text-only layers on one context of ``text_tokens`` tokens."""
    return cfg.text_layers * _layer(text_tokens, cfg.text_width, cfg.text_intermediate)


def fusion_flops(cfg: ModelConfig, text_tokens: int) -> float:
    """Forward FLOPs of the fusion layers on one (text, image) pair."""
    image_tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    d, t = cfg.text_width, text_tokens
    cross = 4 * t * d**2 + 4 * image_tokens * cfg.vision_width * d + 4 * t * image_tokens * d
    return cfg.fusion_layers * (_layer(t, d, cfg.text_intermediate) + cross)


def flops_per_dialog(
    cfg: ModelConfig,
    text_tokens: int,
    candidates: int = NUM_CANDIDATES,
    simclr: bool = True,
    training: bool = True,
) -> float:
    """FLOPs to train on (or to score naively) one dialog of ``candidates`` stickers.

    Training: the candidates plus two SimCLR views of each through the ViT, the context once,
    3 fused pairs (ITM: 1 positive, 2 negatives), times 3 for the backward pass. Scoring: the
    candidates, the context, and one fused pair per candidate, forward only.
    """
    if training:
        images = candidates * (3 if simclr else 1)
        forward = (images * image_flops(cfg) + text_flops(cfg, text_tokens)
                   + 3 * fusion_flops(cfg, text_tokens))
        return 3 * forward
    return (candidates * image_flops(cfg) + text_flops(cfg, text_tokens)
            + candidates * fusion_flops(cfg, text_tokens))
