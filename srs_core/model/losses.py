"""The PBR losses as pure functions on tensors (DESIGN.md section 3), plus the gather helper.

Shapes: ``B`` dialogs, ``C`` candidates per dialog (positive at index 0), ``E`` feature width,
``M`` = ``7K`` emotion-anchor logits. Every loss returns a scalar computed in float32, also
inside a bf16 autocast region (an fp32 island: autocast would run their matmuls in bf16).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch.nn import functional as F

from srs_core.config import LossConfig
from srs_core.data.ser30k import EMOTIONS, NEGATIVE_EMOTIONS, POSITIVE_EMOTIONS
from srs_core.runtime.precision import fp32_island

POLARITY_EPS = 1e-4  # DESIGN.md: p_t = [pos, neg] / (pos + neg + 1e-4)
HARD_NEGATIVE_SCALES = ("paper", "temperature")


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x [N, ...]`` from every rank -> ``[world*N, ...]``, keeping gradients.

    Identity when ``torch.distributed`` is not initialised. The backward pass sums each rank's
    gradient into the slice it contributed, so a loss computed identically on every rank over
    the gathered batch gives, after DDP's averaging, the gradient of the global loss.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # Deprecated in favour of a private API; this public one works on gloo and NCCL.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x), dim=0)


def ita_loss(
    text_feat: torch.Tensor, image_feat: torch.Tensor, temperature: torch.Tensor | float
) -> torch.Tensor:
    """Image-text contrastive loss, the mean of both directions.

    ``text_feat [B, E]`` and ``image_feat [B, C, E]`` are normalised. Text->image: softmax over
    the dialog's own C candidates, target 0. Image->text: each positive image against the B
    texts, target the diagonal.
    """
    with fp32_island(text_feat.device):
        text_feat, image_feat = text_feat.float(), image_feat.float()
        temperature = temperature.float() if torch.is_tensor(temperature) else temperature
        t2i = torch.einsum("be,bce->bc", text_feat, image_feat) / temperature  # [B, C]
        i2t = image_feat[:, 0] @ text_feat.T / temperature  # [B, B]
        zeros = torch.zeros(len(t2i), dtype=torch.long, device=t2i.device)
        diagonal = torch.arange(len(i2t), device=i2t.device)
        return (F.cross_entropy(t2i, zeros) + F.cross_entropy(i2t, diagonal)) / 2


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over ``z1, z2 [..., N, d]`` (two views of N items), mean over 2N.

    Leading dimensions are independent groups: ``[B, C, d]`` gives the intra-topic loss (each
    dialog's candidates only), ``[N, d]`` one group over everything (inter-topic).
    """
    with fp32_island(z1.device):
        z = F.normalize(torch.cat([z1, z2], dim=-2).float(), dim=-1)  # [..., 2N, d]
        n2 = z.shape[-2]
        logits = z @ z.transpose(-1, -2) / temperature  # [..., 2N, 2N]
        eye = torch.eye(n2, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        target = (torch.arange(n2, device=z.device) + n2 // 2) % n2  # the other view
        target = target.expand(logits.shape[:-1])
        return F.cross_entropy(logits.reshape(-1, n2), target.reshape(-1))


def emotion_kl(student_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) || softmax(student))`` over ``[N, M]`` logits, mean over N."""
    with fp32_island(student_logits.device):
        student = F.log_softmax(student_logits.float(), dim=-1)
        target = F.log_softmax(target_logits.float(), dim=-1)
        return F.kl_div(student, target, reduction="batchmean", log_target=True)


def text_polarity(counts: torch.Tensor) -> torch.Tensor:
    """``[N, 2]`` (positive, negative) word counts -> polarity ``[N, 2]`` (zeros stay zeros)."""
    counts = counts.float()
    return counts / (counts.sum(dim=-1, keepdim=True) + POLARITY_EPS)


def image_polarity(emotion_logits: torch.Tensor) -> torch.Tensor:
    """Student emotion logits ``[N, 7K]`` -> polarity ``[N, 2]`` (positive, negative).

    Logits are read as ``[7, K]`` (class-major, the anchors' order), averaged over K; the
    positive score is the max over classes 0-1, the negative one over classes 2-5.
    """
    per_class = emotion_logits.float().unflatten(-1, (len(EMOTIONS), -1)).mean(dim=-1)
    positive = per_class[..., list(POSITIVE_EMOTIONS)].amax(dim=-1)
    negative = per_class[..., list(NEGATIVE_EMOTIONS)].amax(dim=-1)
    return torch.stack([positive, negative], dim=-1).softmax(dim=-1)


def polarity_affinity(query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``softmax_j(2 - ||query_i - candidates_j||_1)``: ``[N, 2] x [M, 2] -> [N, M]``."""
    distance = (query.float()[:, None, :] - candidates.float()[None, :, :]).abs().sum(dim=-1)
    return (2 - distance).softmax(dim=-1)


def mining_similarities(
    text_feat: torch.Tensor,
    image_feat: torch.Tensor,
    positive: torch.Tensor,
    temperature: torch.Tensor | float,
    scale: str = "paper",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity logits of hard-negative sampling: text->image ``[B, B*C]``, image->text
    ``[B, B]`` (normalised ``text_feat [B, E]``, ``image_feat [B*C, E]``, ``positive [B]``
    flat indices of the positive images).

    ``paper`` (the authors' code): text->image uses the raw cosine, image->text the cosine
    divided by the temperature. ``temperature``: both divided by it (a much peakier draw in
    which the polarity affinity hardly counts).
    """
    if scale not in HARD_NEGATIVE_SCALES:
        raise ValueError(f"hard-negative scale {scale!r} is not one of {HARD_NEGATIVE_SCALES}")
    with fp32_island(text_feat.device):
        text_feat, image_feat = text_feat.float(), image_feat.float()
        t2i = text_feat @ image_feat.T
        i2t = image_feat[positive] @ text_feat.T / temperature
        if scale == "temperature":
            t2i = t2i / temperature
        return t2i, i2t


def negative_weights(
    similarity: torch.Tensor,
    positive: torch.Tensor,
    affinity: torch.Tensor | None = None,
    hard: bool = True,
) -> torch.Tensor:
    """Sampling distribution ``[N, M]`` over negatives; row i never picks ``positive[i]``.

    ``hard``: ``softmax(similarity + affinity)`` (affinity optional); otherwise uniform.
    """
    logits = similarity.float() + (affinity.float() if affinity is not None else 0.0)
    if not hard:
        logits = torch.zeros_like(logits)
    logits = logits.scatter(1, positive[:, None], float("-inf"))
    return logits.softmax(dim=-1)


def sample_hard_negatives(
    similarity: torch.Tensor,
    positive: torch.Tensor,
    affinity: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    hard: bool = True,
) -> torch.Tensor:
    """One negative index per row ``[N]`` drawn from :func:`negative_weights` (needs M >= 2)."""
    weights = negative_weights(similarity.detach(), positive, affinity, hard)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of matching logits ``[N, 2]`` against labels ``[N]`` (1 = match)."""
    with fp32_island(logits.device):
        return F.cross_entropy(logits.float(), labels)


def total_loss(terms: Mapping[str, torch.Tensor], cfg: LossConfig) -> torch.Tensor:
    """``ita + itm + simclr_weight*(intra + inter) + emotion_weight*emotion`` (absent = 0)."""
    zero = next(iter(terms.values())).new_zeros(())
    return (
        terms.get("ita", zero)
        + terms.get("itm", zero)
        + cfg.simclr_weight * (terms.get("simclr_intra", zero) + terms.get("simclr_inter", zero))
        + cfg.emotion_weight * terms.get("emotion", zero)
    )


def compute_losses(
    model: torch.nn.Module,
    batch: Mapping[str, torch.Tensor],
    teacher_logits: torch.Tensor | None,
    loss_cfg: LossConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Training losses of one batch through ``model`` (an ``SrsModel``, DDP-wrapped or not).

    Goes through ``model.__call__`` so that DistributedDataParallel sees a forward pass. Keys:
    ``loss`` (the total) and each enabled term (``ita``, ``itm``, ``simclr_intra``,
    ``simclr_inter``, ``emotion``), all scalars.
    """
    return model(batch, teacher_logits=teacher_logits, loss_cfg=loss_cfg, generator=generator)
