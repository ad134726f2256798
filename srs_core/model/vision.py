"""The image encoder: a timm ViT whose parameter names match ALBEF's ``visual_encoder.*``."""

from __future__ import annotations

import math
from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from srs_core.config import ModelConfig
from srs_core.errors import ConfigError


def build_vision_encoder(cfg: ModelConfig) -> VisionTransformer:
    """ViT without a classifier head; ``forward_features`` gives ``[N, 1+P, D]`` (CLS first).

    ``cfg.attention``: ``sdpa`` runs every block's attention through torch's fused
    ``scaled_dot_product_attention``, ``eager`` through timm's explicit softmax.
    """
    encoder = VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.vision_width,
        depth=cfg.vision_depth,
        num_heads=cfg.vision_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        num_classes=0,
        # ALBEF's ViT uses LayerNorm(eps=1e-6); timm's default is the same, stated for clarity.
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    for block in encoder.blocks:
        # timm's default follows the TIMM_FUSED_ATTN environment variable; the config wins.
        block.attn.fused_attn = cfg.attention == "sdpa"
    return encoder


def interpolate_pos_embed(
    pos_embed: torch.Tensor, num_patches: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resize ``[1, prefix+G*G, D]`` position embeddings to ``num_patches`` (a square grid).

    Bicubic, ``align_corners=False`` and no anti-aliasing, as ALBEF's ``interpolate_pos_embed``
    does when it loads 224-px weights (14x14 patches) into a smaller image size.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old, new = math.isqrt(grid.shape[1]), math.isqrt(num_patches)
    if old * old != grid.shape[1] or new * new != num_patches:
        raise ConfigError(
            f"pos_embed: cannot resize {grid.shape[1]} patch positions to {num_patches}; "
            "both must be square grids"
        )
    if old == new:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()
    grid = nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)
