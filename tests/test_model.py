"""The selector on the tiny preset: shapes, masking, training losses, helpers, tokenizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from srs_core.config import LossConfig, load_config
from srs_core.errors import ConfigError
from srs_core.model import SrsModel, convert_sync_batchnorm, flops_per_dialog, param_groups
from srs_core.model.flops import fusion_flops, image_flops, text_flops
from srs_core.model.losses import compute_losses, total_loss
from srs_core.model.tokenizer import build_vocab, encode_contexts, load_tokenizer

B, C, K = 3, 10, 2


@pytest.fixture(scope="module")
def cfg():
    return load_config(preset="tiny")


@pytest.fixture()
def model(cfg) -> SrsModel:
    torch.manual_seed(0)
    return SrsModel(cfg.model, num_anchor_logits=7 * K)


def _batch(cfg, b: int = B, views: bool = True, t: int = 12) -> dict:
    s = cfg.model.image_size
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, t // 2:] = 0  # one padded context
    batch = {
        "images": torch.randn(b, C, 3, s, s),
        "input_ids": torch.randint(5, 200, (b, t)),
        "attention_mask": mask,
        "text_polarity": torch.tensor([[3.0, 1.0], [0.0, 0.0], [0.0, 2.0]])[:b],
    }
    if views:
        batch["views"] = torch.randn(2, b, C, 3, s, s)
    return batch


def test_encoder_shapes(cfg, model: SrsModel) -> None:
    m = cfg.model
    patches = (m.image_size // m.patch_size) ** 2
    tokens, feat = model.encode_image(torch.randn(5, 3, m.image_size, m.image_size))
    assert tokens.shape == (5, 1 + patches, m.vision_width)
    assert feat.shape == (5, m.embed_dim)
    assert torch.allclose(feat.norm(dim=-1), torch.ones(5))
    text_tokens, text_feat = model.encode_text(
        torch.randint(5, 99, (5, 7)), torch.ones(5, 7, dtype=torch.long)
    )
    assert text_tokens.shape == (5, 7, m.text_width) and text_feat.shape == (5, m.embed_dim)
    assert model.itm_logits(text_tokens, torch.ones(5, 7), tokens).shape == (5, 2)
    assert model.emotion_logits(tokens[:, 0]).shape == (5, 7 * K)
    assert model.simclr(tokens[:, 0]).shape == (5, m.simclr_dim)


def test_padding_does_not_change_text_or_fusion_outputs(cfg, model: SrsModel) -> None:
    model.eval()
    ids = torch.randint(5, 99, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
    image_tokens, _ = model.encode_image(torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        short_tokens, short_feat = model.encode_text(ids, torch.ones(1, 6, dtype=torch.long))
        long_tokens, long_feat = model.encode_text(padded, mask)
        short_itm = model.itm_logits(short_tokens, torch.ones(1, 6), image_tokens)
        long_itm = model.itm_logits(long_tokens, mask, image_tokens)
    assert torch.allclose(short_feat, long_feat, atol=1e-5)
    assert torch.allclose(short_tokens, long_tokens[:, :6], atol=1e-5)
    assert torch.allclose(short_itm, long_itm, atol=1e-5)
    # And the mask matters: attending to the padding changes the result.
    with torch.no_grad():
        unmasked, _ = model.encode_text(padded, torch.ones(1, 10, dtype=torch.long))
    assert not torch.allclose(unmasked[:, :6], short_tokens, atol=1e-3)


SWITCHES = [
    {},  # everything on
    {"emotion": False},
    {"simclr_intra": False, "simclr_inter": False},
    {"hard_mining": False},
    {"polarity": False},
    {"ita": False, "itm": False, "emotion": False},  # SimCLR only
    {"itm": False, "simclr_inter": False},
]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(s) or "all")
def test_training_losses_for_switch_combinations(cfg, model: SrsModel, switches: dict) -> None:
    loss_cfg = LossConfig(**switches)
    simclr = loss_cfg.simclr_intra or loss_cfg.simclr_inter
    batch = _batch(cfg, views=simclr)
    teacher = torch.randn(B, C, 7 * K) if loss_cfg.emotion else None
    out = compute_losses(model, batch, teacher, loss_cfg, torch.Generator().manual_seed(0))
    enabled = {name for name in ("ita", "itm", "emotion", "simclr_intra", "simclr_inter")
               if getattr(loss_cfg, name)}
    assert set(out) == enabled | {"loss"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
    assert out["loss"].item() == pytest.approx(
        total_loss({k: v for k, v in out.items() if k != "loss"}, loss_cfg).item()
    )
    out["loss"].backward()
    cross = model.fusion.layer[0].crossattention.self.key.weight.grad
    assert (cross is not None and cross.abs().sum() > 0) == loss_cfg.itm
    projector = model.simclr_projector[0].weight.grad
    assert (projector is not None and projector.abs().sum() > 0) == simclr
    vision = model.vision.blocks[0].attn.qkv.weight.grad
    assert vision is not None and vision.abs().sum() > 0


def test_training_is_reproducible_with_a_seeded_generator(cfg, model: SrsModel) -> None:
    model.eval()  # no dropout, so only the negative sampling could differ
    batch, teacher = _batch(cfg), torch.randn(B, C, 7 * K)
    first = model(batch, teacher, LossConfig(), torch.Generator().manual_seed(3))
    second = model(batch, teacher, LossConfig(), torch.Generator().manual_seed(3))
    assert first["itm"].item() == pytest.approx(second["itm"].item(), rel=1e-6)


def test_a_single_dialog_batch_trains(cfg, model: SrsModel) -> None:
    out = model(_batch(cfg, b=1), torch.randn(1, C, 7 * K), LossConfig())
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_temperature_is_clamped_only_when_asked(cfg, model: SrsModel) -> None:
    with torch.no_grad():
        model.temperature.fill_(3.0)
    model(_batch(cfg), torch.randn(B, C, 7 * K), LossConfig())
    assert model.temperature.item() == 3.0  # the authors' PBR code never clamps
    model(_batch(cfg), torch.randn(B, C, 7 * K), LossConfig(clamp_temperature=True))
    assert model.temperature.item() == pytest.approx(0.5)  # ALBEF's range


def test_misconfigured_batches_are_explained(cfg, model: SrsModel) -> None:
    with pytest.raises(ConfigError, match="views"):
        model(_batch(cfg, views=False), torch.randn(B, C, 7 * K), LossConfig())
    with pytest.raises(ConfigError, match="teacher"):
        model(_batch(cfg), None, LossConfig())
    off = {k: False for k in ("ita", "itm", "simclr_intra", "simclr_inter", "emotion")}
    with pytest.raises(ConfigError, match="switched off"):
        model(_batch(cfg), None, LossConfig(**off))
    with pytest.raises(ConfigError, match="max_position"):
        model.encode_text(torch.ones(1, 200, dtype=torch.long), torch.ones(1, 200))
    with pytest.raises(ConfigError, match="multiple of 7"):
        SrsModel(cfg.model, num_anchor_logits=10)


def test_param_groups(model: SrsModel) -> None:
    embeddings = (model.temperature, model.vision.pos_embed, model.vision.cls_token)
    for rule in ("paper", "exempt_embeddings"):
        decay, no_decay = param_groups(model, 0.02, rule)
        assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
        ids = [id(p) for group in (decay, no_decay) for p in group["params"]]
        assert sorted(ids) == sorted(id(p) for p in model.parameters())
        no_decay_ids = {id(p) for p in no_decay["params"]}
        for param in (model.vision_proj.bias, model.text.layer[0].output.LayerNorm.weight,
                      model.simclr_projector[1].weight):
            assert id(param) in no_decay_ids
        assert id(model.vision_proj.weight) not in no_decay_ids
        assert id(model.text.embeddings.word_embeddings.weight) not in no_decay_ids
        # The authors' add_weight_decay spares only 1-d tensors and biases: the 0-d temperature,
        # cls token and position embeddings are decayed there.
        exempt = {id(p) in no_decay_ids for p in embeddings}
        assert exempt == ({True} if rule == "exempt_embeddings" else {False})
    assert param_groups(model, 0.02) == param_groups(model, 0.02, "paper")


def test_sync_batchnorm_only_on_gpu(model: SrsModel) -> None:
    on_cpu = convert_sync_batchnorm(model, torch.device("cpu"))
    assert type(on_cpu.simclr_projector[1]) is torch.nn.BatchNorm1d  # DDP rejects it on CPU
    on_gpu = convert_sync_batchnorm(model, torch.device("cuda"))
    assert isinstance(on_gpu.simclr_projector[1], torch.nn.SyncBatchNorm)


def _counted(fn, *args) -> int:
    # The math SDPA backend runs attention as matmuls, which the counter sees (it does not
    # know the fused CPU kernel).
    with (FlopCounterMode(display=False) as counter, torch.no_grad(),
          sdpa_kernel(SDPBackend.MATH)):
        fn(*args)
    return counter.get_total_flops()


def test_flop_formula_matches_torch_counter(cfg, model: SrsModel) -> None:
    m, t = cfg.model, 16
    images = torch.randn(1, 3, m.image_size, m.image_size)
    image_tokens = model.image_tokens(images)
    ids, mask = torch.randint(5, 99, (1, t)), torch.ones(1, t, dtype=torch.long)
    assert image_flops(m) == _counted(model.image_tokens, images)
    assert text_flops(m, t) == _counted(model.text, ids, mask)
    text_tokens = model.text(ids, mask)
    assert fusion_flops(m, t) == _counted(model.fusion, text_tokens, mask, image_tokens)
    per_dialog = 3 * (30 * image_flops(m) + text_flops(m, t) + 3 * fusion_flops(m, t))
    assert flops_per_dialog(m, t) == per_dialog


# Tokenizer ----------------------------------------------------------------------------------

def test_vocab_covers_the_texts_and_matches_transformers(tmp_path: Path) -> None:
    from transformers import BertTokenizer

    texts = ["我 正在 用 大 套子", "Hello 世界 2024!", "哈哈😀", "Café OK"]
    for lowercase in (False, True):
        size = build_vocab(texts, tmp_path / "vocab.txt", lowercase=lowercase)
        tokenizer = load_tokenizer(tmp_path / "vocab.txt", lowercase=lowercase)
        assert len(tokenizer) == size
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        assert all(tokenizer.unk_token_id not in row for row in ids)
        reference = BertTokenizer.from_pretrained(str(tmp_path), do_lower_case=lowercase)
        assert ids == reference(texts, add_special_tokens=False)["input_ids"]


def test_contexts_are_cls_utterances_and_seps(tmp_path: Path) -> None:
    build_vocab(["一二三四五六七八九十"], tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(tmp_path / "vocab.txt")
    ids, mask = encode_contexts(tokenizer, [["一 二", "三"], ["四"]], max_tokens=32)
    decode = tokenizer.convert_ids_to_tokens
    assert decode(ids[0].tolist()) == ["[CLS]", "一", "二", "[SEP]", "三", "[SEP]"]
    assert decode(ids[1].tolist()) == ["[CLS]", "四", "[SEP]", "[PAD]", "[PAD]", "[PAD]"]
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]


def test_truncation_keeps_the_latest_utterances(tmp_path: Path) -> None:
    build_vocab(["一二三四五六七八九十"], tmp_path / "vocab.txt")
    tokenizer = load_tokenizer(tmp_path / "vocab.txt")
    context = ["一二三", "四五六", "七八", "九十"]
    ids, mask = encode_contexts(tokenizer, [context], max_tokens=7)
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert tokens == ["[CLS]", "七", "八", "[SEP]", "九", "十", "[SEP]"]
    assert mask.sum().item() == 7
    short, _ = encode_contexts(tokenizer, [context], max_tokens=4)
    assert tokenizer.convert_ids_to_tokens(short[0].tolist()) == ["[CLS]", "九", "十", "[SEP]"]


def test_vocabulary_without_special_tokens_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ConfigError, match=r"\[PAD\]"):
        load_tokenizer(tmp_path / "vocab.txt")


# ----------------------------------------------------------------------------- attention paths


def _attention_twins(cfg) -> tuple[SrsModel, SrsModel]:
    """The same weights under ``model.attention=sdpa`` and ``eager``, in eval mode."""
    torch.manual_seed(0)
    sdpa = SrsModel(cfg.model, num_anchor_logits=7 * K).eval()
    eager = SrsModel(dataclasses.replace(cfg.model, attention="eager"), 7 * K).eval()
    eager.load_state_dict(sdpa.state_dict())
    return sdpa, eager


def _outputs(model: SrsModel, batch: dict) -> dict[str, torch.Tensor]:
    """Image tokens, text tokens, ITM logits and the training loss of ``batch``."""
    mask = batch["attention_mask"]
    with torch.no_grad():
        image_tokens, _ = model.encode_image(batch["images"][:, 0])
        text_tokens, _ = model.encode_text(batch["input_ids"], mask)
        itm = model.itm_logits(text_tokens, mask, image_tokens)
        loss = compute_losses(model, batch, None, LossConfig(emotion=False),
                              torch.Generator().manual_seed(0))["loss"]
    return {"image": image_tokens, "text": text_tokens, "itm": itm, "loss": loss}


def test_eager_attention_matches_sdpa_with_padded_text(cfg) -> None:
    sdpa, eager = _attention_twins(cfg)
    torch.manual_seed(1)
    batch = _batch(cfg)  # row 0 is half padding
    fused, reference = _outputs(sdpa, batch), _outputs(eager, batch)
    for key in fused:
        torch.testing.assert_close(fused[key], reference[key], rtol=1e-5, atol=1e-5)
    # The eager path reads an additive mask: padding must still be masked out there.
    short = {**batch, "input_ids": batch["input_ids"][:1, :6],
             "attention_mask": batch["attention_mask"][:1, :6]}
    unpadded, _ = eager.encode_text(short["input_ids"], short["attention_mask"])
    torch.testing.assert_close(unpadded[0], reference["text"][0, :6], rtol=1e-5, atol=1e-5)


class _CountAttention(torch.overrides.TorchFunctionMode):
    """Counts calls of ``torch.nn.functional.scaled_dot_product_attention``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _attention_calls(model: SrsModel, cfg) -> dict[str, int]:
    s, t = cfg.model.image_size, 7
    ids, mask = torch.randint(5, 99, (2, t)), torch.ones(2, t, dtype=torch.long)
    counts = {}
    with torch.no_grad():
        with _CountAttention() as counter:
            image_tokens, _ = model.encode_image(torch.randn(2, 3, s, s))
        counts["vision"] = counter.calls
        with _CountAttention() as counter:
            text_tokens, _ = model.encode_text(ids, mask)
        counts["text"] = counter.calls
        with _CountAttention() as counter:
            model.itm_logits(text_tokens, mask, image_tokens)
        counts["fusion"] = counter.calls
    return counts


def test_sdpa_switch_reaches_every_encoder(cfg) -> None:
    sdpa, eager = _attention_twins(cfg)
    m = cfg.model
    # one call per layer; a fusion layer attends twice (self, then cross to the image)
    assert _attention_calls(sdpa, cfg) == {
        "vision": m.vision_depth, "text": m.text_layers, "fusion": 2 * m.fusion_layers}
    assert _attention_calls(eager, cfg) == {"vision": 0, "text": 0, "fusion": 0}
    with pytest.raises(ConfigError, match="not one of"):
        load_config(preset="tiny", overrides=["model.attention=flash"])
