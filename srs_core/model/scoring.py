"""Scoring many (context, sticker) pairs with the fusion encoder: exact, with the work shared.

:meth:`SrsModel.itm_logits` runs every fusion layer on every pair from scratch. When the same
stickers are ranked for many contexts and each context against ten stickers, three pieces of
that work repeat, and :func:`match_scores` does each once:

- the cross-attention keys and values of a sticker's image tokens depend on the sticker alone:
  :func:`image_memory` projects them once per sticker (``ImageMemory``), and a pair gathers
  them by index;
- the first fusion layer's self-attention reads the text alone: it runs once per context and
  its output is repeated over that context's candidates;
- only the ``[CLS]`` position of the last layer feeds the ITM head: that layer computes the
  keys and values of every position but the query, attention and feed-forward of ``[CLS]``.

Shapes: ``R`` stickers, ``B`` contexts, ``C`` candidates per context, ``T`` text tokens,
``L = 1+P`` image tokens, ``H`` heads of width ``d``. The scores equal ``itm_logits``'s up
to float rounding (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from srs_core.model.text import key_padding_mask


@dataclass
class ImageMemory:
    """What the fusion encoder reads of ``R`` stickers: per layer, keys and values
    ``[R, H, L, d]`` of their image tokens."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.keys[0]) if self.keys else 0

    @staticmethod
    def concat(parts: list[ImageMemory]) -> ImageMemory:
        layers = range(len(parts[0].keys))
        return ImageMemory([torch.cat([p.keys[i] for p in parts]) for i in layers],
                           [torch.cat([p.values[i] for p in parts]) for i in layers])


def _heads(x: torch.Tensor, attention: nn.Module) -> torch.Tensor:
    """``[N, L, H*d]`` -> ``[N, H, L, d]``."""
    return x.view(*x.shape[:2], -1, attention.attention_head_size).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, L, d]`` -> ``[N, L, H*d]``."""
    return x.transpose(1, 2).flatten(2)


def image_memory(model: nn.Module, image_tokens: torch.Tensor) -> ImageMemory:
    """Cross-attention keys and values of ``image_tokens [R, L, Dv]`` in every fusion layer."""
    keys, values = [], []
    for layer in model.fusion.layer:
        cross = layer.crossattention.self
        keys.append(_heads(cross.key(image_tokens), cross))
        values.append(_heads(cross.value(image_tokens), cross))
    return ImageMemory(keys, values)


def _self_attention(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                    queries: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's self-attention block; ``queries`` (default: every position) are the
    positions whose output is wanted, keys and values always cover the whole ``hidden``."""
    attention = layer.attention.self
    queries = hidden if queries is None else queries
    context = F.scaled_dot_product_attention(
        _heads(attention.query(queries), attention), _heads(attention.key(hidden), attention),
        _heads(attention.value(hidden), attention), attn_mask=mask, scale=attention.scaling)
    return layer.attention.output(_merge(context), queries)


def _cross_and_feed_forward(layer: nn.Module, hidden: torch.Tensor, keys: torch.Tensor,
                            values: torch.Tensor) -> torch.Tensor:
    """Cross-attention to the gathered image keys/values, then the feed-forward block."""
    cross = layer.crossattention.self
    context = F.scaled_dot_product_attention(_heads(cross.query(hidden), cross), keys, values,
                                             scale=cross.scaling)
    hidden = layer.crossattention.output(_merge(context), hidden)
    return layer.output(layer.intermediate(hidden), hidden)


def match_scores(
    model: nn.Module, text_tokens: torch.Tensor, attention_mask: torch.Tensor,
    memory: ImageMemory, index: torch.Tensor,
) -> torch.Tensor:
    """ITM match logits ``[B, C]`` of each context against its candidates.

    ``text_tokens [B, T, Dt]``/``attention_mask [B, T]`` from ``encode_text``; ``index [B, C]``
    rows of ``memory`` (from :func:`image_memory`). Equals ``itm_logits(...)[:, 1]`` of the
    ``B*C`` pairs; the model must be in eval mode (no dropout).
    """
    b, c = index.shape
    flat = index.flatten()
    layers = model.fusion.layer
    mask = key_padding_mask(attention_mask)  # [B, 1, 1, T]
    hidden = _self_attention(layers[0], text_tokens, mask).repeat_interleave(c, dim=0)
    mask = mask.repeat_interleave(c, dim=0)
    for i, layer in enumerate(layers):
        if i > 0:
            last = i == len(layers) - 1
            hidden = _self_attention(layer, hidden, mask, hidden[:, :1] if last else None)
        hidden = _cross_and_feed_forward(layer, hidden, memory.keys[i][flat],
                                         memory.values[i][flat])
    return model.itm_head(hidden[:, 0])[:, 1].view(b, c)
