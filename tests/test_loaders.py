"""Pretrained-weight loaders on synthetic ALBEF.pth- and bert-base-chinese-style state dicts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from transformers import BertConfig, BertModel

from srs_core.config import load_config
from srs_core.errors import ConfigError
from srs_core.model import SrsModel
from srs_core.model.loaders import load_albef_vision, load_bert_text
from srs_core.model.vision import build_vision_encoder, interpolate_pos_embed


def _albef_checkpoint(vit: torch.nn.Module) -> dict:
    """ALBEF.pth layout: ``{"model": {...}}`` with the vision, momentum and text weights."""
    state = {f"visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state.update({f"visual_encoder_m.{k}": v for k, v in list(vit.state_dict().items())[:4]})
    state["text_encoder.bert.embeddings.word_embeddings.weight"] = torch.zeros(4, 8)
    state["temp"] = torch.tensor(0.07)
    return {"model": state, "epoch": 29}


def test_albef_vit_b16_at_224_loads_into_the_paper_encoder_at_128() -> None:
    albef = VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12,
                              num_heads=12, num_classes=0)
    paper = load_config(preset="paper").model
    vision = build_vision_encoder(paper)
    report = load_albef_vision(vision, _albef_checkpoint(albef))
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(vision.state_dict())
    assert report.ignored == 4 + 2  # momentum copy, text encoder, temperature
    assert vision.pos_embed.shape == (1, 1 + 64, 768)
    assert torch.equal(vision.pos_embed[:, 0], albef.pos_embed[:, 0].detach())
    assert torch.equal(vision.blocks[11].mlp.fc2.weight, albef.blocks[11].mlp.fc2.weight)


def test_albef_loads_into_the_tiny_model_and_resizes_pos_embed() -> None:
    tiny = load_config(preset="tiny").model
    bigger = dataclasses.replace(tiny, image_size=2 * tiny.image_size)  # 8x8 patch grid
    source = build_vision_encoder(bigger)
    model = SrsModel(tiny, num_anchor_logits=14)
    report = load_albef_vision(model, _albef_checkpoint(source)["model"])  # bare state dict
    assert report.missing == [] and report.unexpected == []
    expected = interpolate_pos_embed(source.pos_embed.detach(), 16)
    assert torch.equal(model.vision.pos_embed.detach(), expected)
    assert "loaded" in str(report) and report.as_dict()["loaded"] == len(report.loaded)


def test_pos_embed_interpolation() -> None:
    pos = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pos, 16) is pos
    constant = torch.ones(1, 1 + 196, 8) * torch.arange(8.0)  # same value at every position
    resized = interpolate_pos_embed(constant, 64)
    assert resized.shape == (1, 65, 8)
    assert torch.allclose(resized, torch.ones(1, 65, 8) * torch.arange(8.0), atol=1e-5)
    with pytest.raises(ConfigError, match="square"):
        interpolate_pos_embed(torch.randn(1, 1 + 15, 8), 16)


def test_vision_shape_mismatch_names_key_and_shapes() -> None:
    tiny = load_config(preset="tiny").model
    wider = build_vision_encoder(dataclasses.replace(tiny, vision_width=96, vision_heads=2))
    with pytest.raises(ConfigError, match=r"visual_encoder\.cls_token.*\[1, 1, 96\].*\[1, 1, 64\]"):
        load_albef_vision(build_vision_encoder(tiny), _albef_checkpoint(wider))


def test_checkpoint_without_vision_keys_is_rejected() -> None:
    with pytest.raises(ConfigError, match="visual_encoder"):
        load_albef_vision(build_vision_encoder(load_config(preset="tiny").model),
                          {"model": {"text_encoder.x": torch.zeros(1)}})


def _hf_bert(tiny, layers: int) -> BertModel:
    config = BertConfig(vocab_size=tiny.vocab_size, hidden_size=tiny.text_width,
                        num_hidden_layers=layers, num_attention_heads=tiny.text_heads,
                        intermediate_size=tiny.text_intermediate,
                        max_position_embeddings=tiny.max_position)
    torch.manual_seed(1)
    return BertModel(config).eval()


def _hf_state(bert: BertModel) -> dict:
    """bert-base-chinese's pytorch_model.bin layout: ``bert.`` prefix, heads, old LN names."""
    state = {}
    for key, value in bert.state_dict().items():
        if key.startswith("embeddings.LayerNorm."):
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        state[f"bert.{key}"] = value
    state["cls.predictions.bias"] = torch.zeros(bert.config.vocab_size)
    return state


def test_bert_weights_fill_text_and_fusion_layers() -> None:
    tiny = load_config(preset="tiny").model
    bert = _hf_bert(tiny, tiny.text_layers + tiny.fusion_layers)
    model = SrsModel(tiny, num_anchor_logits=14).eval()
    report = load_bert_text(model, _hf_state(bert))
    assert report.unexpected == []
    assert report.missing and all(".crossattention." in key for key in report.missing)
    # Per layer: query, key, value, output dense (weight, bias) and LayerNorm (weight, bias).
    assert len(report.missing) == tiny.fusion_layers * 10
    assert torch.equal(model.fusion.layer[1].intermediate.dense.weight,
                       bert.encoder.layer[tiny.text_layers + 1].intermediate.dense.weight)
    assert torch.equal(model.text.embeddings.LayerNorm.weight, bert.embeddings.LayerNorm.weight)


def test_text_encoder_equals_hugging_face_bert() -> None:
    """Same weights, same padded input: our text-only layers give BertModel's hidden states."""
    tiny = load_config(preset="tiny").model
    bert = _hf_bert(tiny, tiny.text_layers)
    model = SrsModel(tiny, num_anchor_logits=14).eval()
    state = {k: v for k, v in bert.state_dict().items()}  # no "bert." prefix this time
    report = load_bert_text(model, state)
    assert not any(key.startswith("text.") for key in report.missing)
    ids = torch.randint(5, 500, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        ours, _ = model.encode_text(ids, mask)
        reference = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(ours[0], reference[0], atol=1e-5)
    assert torch.allclose(ours[1, :5], reference[1, :5], atol=1e-5)


def test_bert_with_more_layers_reports_unexpected_and_mismatch_fails() -> None:
    tiny = load_config(preset="tiny").model
    model = SrsModel(tiny, num_anchor_logits=14)
    deeper = _hf_bert(tiny, tiny.text_layers + tiny.fusion_layers + 1)
    report = load_bert_text(model, _hf_state(deeper))
    assert report.unexpected and all(".layer.4." in key for key in report.unexpected)
    wide = BertModel(BertConfig(vocab_size=tiny.vocab_size, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64,
                                max_position_embeddings=tiny.max_position))
    with pytest.raises(ConfigError, match=r"word_embeddings\.weight.*\[21128, 32\]"):
        load_bert_text(model, _hf_state(wide))
