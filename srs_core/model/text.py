"""Text encoder and fusion encoder, built from Hugging Face ``transformers`` BERT modules.

The BERT stack of ``text_layers + fusion_layers`` layers is split in two, as in ALBEF:

- :class:`TextEncoder` (``text.embeddings``, ``text.layer.0..text_layers-1``): text alone.
- :class:`FusionEncoder` (``fusion.layer.0..fusion_layers-1``): self-attention, then
  cross-attention to the image tokens, then the feed-forward block.

Parameter names follow ``BertModel``'s (``attention.self.query``, ``intermediate.dense``, ...),
so a ``bert-base-chinese`` state dict maps onto them by renaming the layer index only (see
``loaders.load_bert_text``); the cross-attention has no counterpart there and starts random.

``transformers``' own ``BertLayer`` only adds cross-attention to *decoder* layers, whose
self-attention is causal, so the fusion layer is assembled from ``BertAttention`` modules.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertAttention,
    BertEmbeddings,
    BertIntermediate,
    BertLayer,
    BertOutput,
)

from srs_core.config import ModelConfig


def bert_config(cfg: ModelConfig) -> BertConfig:
    """The ``BertConfig`` of the whole text stack (text-only plus fusion layers)."""
    config = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.text_width,
        num_hidden_layers=cfg.text_layers + cfg.fusion_layers,
        num_attention_heads=cfg.text_heads,
        intermediate_size=cfg.text_intermediate,
        max_position_embeddings=cfg.max_position,
        type_vocab_size=2,  # as bert-base-chinese, so its token_type embeddings load
    )
    # model.attention: "sdpa" runs torch's fused scaled_dot_product_attention (the fast
    # kernel on GPU), "eager" transformers' matmul-softmax-matmul (the reference); the
    # encoders build the mask each one reads (key_padding_mask).
    config._attn_implementation = cfg.attention
    return config


def key_padding_mask(attention_mask: torch.Tensor, implementation: str = "sdpa") -> torch.Tensor:
    """``[B, T]`` 1/0 mask -> ``[B, 1, 1, T]``, broadcast over queries.

    ``sdpa``: boolean (True = attend). ``eager`` adds its mask to the scores, so it gets an
    additive float32 one (0 = attend, the most negative float32 = padding).
    """
    keep = attention_mask.bool()[:, None, None, :]
    if implementation == "sdpa":
        return keep
    additive = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device)
    return additive.masked_fill(~keep, torch.finfo(torch.float32).min)


def init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation (normal, std 0.02) for modules that are not loaded from weights."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TextEncoder(nn.Module):
    """Embeddings and text-only layers: ``(ids [B, T], mask [B, T]) -> tokens [B, T, D]``."""

    def __init__(self, config: BertConfig, num_layers: int) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(config)
        self.layer = nn.ModuleList(BertLayer(config, layer_idx=i) for i in range(num_layers))
        self.attention_implementation = config._attn_implementation

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids)
        mask = key_padding_mask(attention_mask, self.attention_implementation)
        for layer in self.layer:
            hidden = layer(hidden, mask)
        return hidden


class FusionLayer(nn.Module):
    """Self-attention over the text, cross-attention to the image tokens, feed-forward."""

    def __init__(self, config: BertConfig, image_width: int, layer_idx: int) -> None:
        super().__init__()
        self.attention = BertAttention(config, is_causal=False, layer_idx=layer_idx)
        self.crossattention = BertAttention(
            config, is_causal=False, layer_idx=layer_idx, is_cross_attention=True
        )
        if image_width != config.hidden_size:
            # Keys and values read the image tokens, which may be wider than the text.
            cross = self.crossattention.self
            cross.key = nn.Linear(image_width, cross.all_head_size)
            cross.value = nn.Linear(image_width, cross.all_head_size)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        hidden, _ = self.attention(hidden, mask)
        # Every image token is real, so the cross-attention needs no mask.
        hidden, _ = self.crossattention(hidden, None, image_tokens, None)
        return self.output(self.intermediate(hidden), hidden)


class FusionEncoder(nn.Module):
    """``(text tokens [N, T, D], mask [N, T], image tokens [N, 1+P, Dv]) -> [N, T, D]``."""

    def __init__(self, config: BertConfig, num_layers: int, image_width: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            FusionLayer(config, image_width, layer_idx=i) for i in range(num_layers)
        )
        self.attention_implementation = config._attn_implementation

    def forward(
        self, text_tokens: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        hidden = text_tokens
        mask = key_padding_mask(attention_mask, self.attention_implementation)
        for layer in self.layer:
            hidden = layer(hidden, mask, image_tokens)
        return hidden
