"""The shared-work ITM scoring path equals the model's own fusion forward, pair by pair."""

from __future__ import annotations

import pytest
import torch

from srs_core.config import load_config
from srs_core.model.factory import build_model
from srs_core.model.scoring import ImageMemory, image_memory, match_scores


def _model(fusion_layers: int) -> torch.nn.Module:
    cfg = load_config(preset="tiny", overrides=[f"model.fusion_layers={fusion_layers}"])
    torch.manual_seed(fusion_layers)
    return build_model(cfg.model, 28, 60).eval()


@pytest.mark.parametrize("fusion_layers", [1, 2, 3])
def test_match_scores_equal_itm_logits_of_every_pair(fusion_layers: int) -> None:
    model = _model(fusion_layers)
    generator = torch.Generator().manual_seed(0)
    b, c, t, r = 3, 4, 9, 7
    size = model.cfg.image_size
    ids = torch.randint(5, 60, (b, t), generator=generator)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 5:] = 0  # padded contexts of different lengths
    mask[2, 2:] = 0
    index = torch.randint(0, r, (b, c), generator=generator)
    with torch.no_grad():
        image_tokens, _ = model.encode_image(torch.randn(r, 3, size, size, generator=generator))
        text_tokens, _ = model.encode_text(ids, mask)
        fast = match_scores(model, text_tokens, mask, image_memory(model, image_tokens), index)
        slow = model.itm_logits(text_tokens.repeat_interleave(c, 0),
                                mask.repeat_interleave(c, 0), image_tokens[index.flatten()])
    assert fast.shape == (b, c)
    torch.testing.assert_close(fast, slow[:, 1].view(b, c), rtol=1e-5, atol=1e-5)


def test_image_memory_concatenates_in_row_order() -> None:
    model = _model(2)
    size = model.cfg.image_size
    with torch.no_grad():
        tokens, _ = model.encode_image(torch.randn(5, 3, size, size))
        whole = image_memory(model, tokens)
        parts = ImageMemory.concat([image_memory(model, tokens[:2]),
                                    image_memory(model, tokens[2:])])
    assert len(parts) == len(whole) == 5
    for a, b in zip(whole.keys + whole.values, parts.keys + parts.values, strict=True):
        torch.testing.assert_close(a, b)
