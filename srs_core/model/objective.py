"""One training step's losses: how the model's parts and the pure losses combine (DESIGN 3.5).

Batch layout (B dialogs, C candidates, positive at index 0, S = model.image_size)::

    images          [B, C, 3, S, S]     candidates (train augmentation, normalised)
    views           [2, B, C, 3, S, S]  two SimCLR augmentations (needed only with SimCLR on)
    input_ids       [B, T]              context tokens
    attention_mask  [B, T]
    text_polarity   [B, 2]              (positive, negative) counts over the context (optional)

``teacher_logits [B, C, 7K]``: the frozen teacher's features times the anchors, ``e @ A.T``
(needed only with the emotion loss on).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from srs_core.config import LossConfig
from srs_core.errors import ConfigError
from srs_core.model.losses import (
    all_gather_with_grad,
    emotion_kl,
    image_polarity,
    ita_loss,
    itm_loss,
    mining_similarities,
    nt_xent,
    polarity_affinity,
    sample_hard_negatives,
    text_polarity,
    total_loss,
)

if TYPE_CHECKING:
    from srs_core.model.selector import SrsModel


def _check(
    cfg: LossConfig, batch: Mapping[str, torch.Tensor], teacher_logits: torch.Tensor | None
) -> None:
    if not cfg.active_terms:
        raise ConfigError("every loss term is switched off (loss.*); enable at least one")
    b, c = batch["images"].shape[:2]
    if (cfg.simclr_intra or cfg.simclr_inter) and batch.get("views") is None:
        raise ConfigError(
            "loss.simclr_intra/simclr_inter is on but the batch has no 'views' [2, B, C, 3, S, S]; "
            "build the data set with SimCLR views or switch both terms off"
        )
    if cfg.emotion:
        if teacher_logits is None:
            raise ConfigError("loss.emotion is on but no teacher logits were given")
        if tuple(teacher_logits.shape[:2]) != (b, c):
            raise ConfigError(
                f"teacher_logits must be [B, C, 7K] = [{b}, {c}, 7K], got "
                f"{list(teacher_logits.shape)}"
            )


def _itm(
    model: SrsModel,
    text_tokens: torch.Tensor,  # [B, T, Dt]
    mask: torch.Tensor,  # [B, T]
    text_feat: torch.Tensor,  # [B, E]
    image_tokens: torch.Tensor,  # [B*C, 1+P, Dv]
    image_feat: torch.Tensor,  # [B*C, E]
    emotion: torch.Tensor | None,  # [B*C, 7K] student logits (for image polarity)
    counts: torch.Tensor | None,  # [B, 2]
    cfg: LossConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """ITM on 1 positive and 2 sampled negative pairs per dialog."""
    b = len(text_feat)
    c = len(image_feat) // b
    temperature = model.temperature.detach()
    with torch.no_grad():
        positive = torch.arange(b, device=text_feat.device) * c  # flat index of each positive
        sim_t2i, sim_i2t = mining_similarities(  # [B, B*C], [B, B]
            text_feat, image_feat, positive, temperature, cfg.hard_negative_scale
        )
        aff_t2i = aff_i2t = None
        if cfg.hard_mining and cfg.polarity:
            p_text = text_polarity(counts if counts is not None else text_feat.new_zeros(b, 2))
            p_image = image_polarity(emotion)
            aff_t2i = polarity_affinity(p_text, p_image)  # [B, B*C]
            aff_i2t = polarity_affinity(p_image[positive], p_text)  # [B, B]
        hard = cfg.hard_mining
        negative_image = sample_hard_negatives(sim_t2i, positive, aff_t2i, generator, hard)
        diagonal = torch.arange(b, device=text_feat.device)
        # A lone dialog has no other text to serve as a negative.
        negative_text = (
            sample_hard_negatives(sim_i2t, diagonal, aff_i2t, generator, hard) if b > 1 else None
        )
    texts, masks = [text_tokens, text_tokens], [mask, mask]
    images = [image_tokens[positive], image_tokens[negative_image]]
    if negative_text is not None:
        texts.append(text_tokens[negative_text])
        masks.append(mask[negative_text])
        images.append(image_tokens[positive])
    logits = model.itm_logits(torch.cat(texts), torch.cat(masks), torch.cat(images))
    labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    labels[:b] = 1
    return itm_loss(logits, labels)


def training_losses(
    model: SrsModel,
    batch: Mapping[str, torch.Tensor],
    teacher_logits: torch.Tensor | None = None,
    loss_cfg: LossConfig | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Enabled loss terms and their weighted total ``"loss"`` for one batch (scalars)."""
    cfg = loss_cfg or LossConfig()
    _check(cfg, batch, teacher_logits)
    images = batch["images"]
    b, c = images.shape[:2]
    simclr = cfg.simclr_intra or cfg.simclr_inter
    pixels = images.flatten(0, 1)  # [B*C, 3, S, S]
    if simclr:
        # One ViT pass over candidates and both views (better GPU utilisation than three).
        pixels = torch.cat([pixels, batch["views"].flatten(0, 2)])
    tokens = model.image_tokens(pixels)
    image_tokens = tokens[: b * c]  # [B*C, 1+P, Dv]
    image_cls = image_tokens[:, 0]
    image_feat = model.image_feature(image_cls)  # [B*C, E]
    text_tokens, text_feat = model.encode_text(batch["input_ids"], batch["attention_mask"])
    if cfg.clamp_temperature:
        model.clamp_temperature()

    terms: dict[str, torch.Tensor] = {}
    if cfg.ita:
        terms["ita"] = ita_loss(text_feat, image_feat.view(b, c, -1), model.temperature)
    emotion = None
    if cfg.emotion or (cfg.itm and cfg.hard_mining and cfg.polarity):
        emotion = model.emotion_logits(image_cls)  # [B*C, 7K]
    if cfg.emotion:
        terms["emotion"] = emotion_kl(emotion, teacher_logits.flatten(0, 1))
    if cfg.itm:
        counts = batch.get("text_polarity")
        terms["itm"] = _itm(
            model, text_tokens, batch["attention_mask"], text_feat, image_tokens, image_feat,
            emotion.detach() if emotion is not None else None, counts, cfg, generator,
        )
    if simclr:
        z1, z2 = model.simclr(tokens[b * c:, 0]).chunk(2)  # [B*C, d] each
        if cfg.simclr_intra:
            terms["simclr_intra"] = nt_xent(
                z1.view(b, c, -1), z2.view(b, c, -1), cfg.simclr_temperature
            )
        if cfg.simclr_inter:
            terms["simclr_inter"] = nt_xent(
                all_gather_with_grad(z1), all_gather_with_grad(z2), cfg.simclr_temperature
            )
    return {"loss": total_loss(terms, cfg), **terms}
