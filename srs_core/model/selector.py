"""The sticker selector: ViT image encoder, BERT text and fusion encoders, and the PBR heads.

Shapes: ``N`` images or texts, ``P`` patches, ``T`` text tokens, ``Dv``/``Dt`` vision/text
widths, ``E`` = ``embed_dim`` (the shared ITA space), ``7K`` = ``num_anchor_logits``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from srs_core.config import LossConfig, ModelConfig
from srs_core.data.ser30k import EMOTIONS
from srs_core.errors import ConfigError
from srs_core.model.text import FusionEncoder, TextEncoder, bert_config, init_bert_weights
from srs_core.model.vision import build_vision_encoder

# ALBEF keeps its learnable temperature inside this range.
TEMPERATURE_RANGE = (0.001, 0.5)


class SrsModel(nn.Module):
    """ALBEF-style dual encoder with a fusion encoder, emotion head and SimCLR projector.

    ``model(batch, teacher_logits, loss_cfg, generator)`` returns the training losses (see
    :func:`srs_core.model.objective.training_losses`); it is the call to make through
    ``DistributedDataParallel``. Scoring uses :meth:`encode_image`, :meth:`encode_text` and
    :meth:`itm_logits`.
    """

    def __init__(self, cfg: ModelConfig, num_anchor_logits: int) -> None:
        super().__init__()
        if num_anchor_logits <= 0 or num_anchor_logits % len(EMOTIONS):
            raise ConfigError(
                f"num_anchor_logits must be a positive multiple of {len(EMOTIONS)} (7 emotions "
                f"x K anchors), got {num_anchor_logits}; check the anchors' first dimension"
            )
        self.cfg = cfg
        self.num_anchor_logits = num_anchor_logits
        self.vision = build_vision_encoder(cfg)
        config = bert_config(cfg)
        self.text = TextEncoder(config, cfg.text_layers)
        self.fusion = FusionEncoder(config, cfg.fusion_layers, cfg.vision_width)
        self.vision_proj = nn.Linear(cfg.vision_width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim)
        self.temperature = nn.Parameter(torch.tensor(float(cfg.temperature)))
        self.itm_head = nn.Linear(cfg.text_width, 2)
        self.emo_proj = nn.Linear(cfg.vision_width, num_anchor_logits)
        self.simclr_projector = nn.Sequential(
            nn.Linear(cfg.vision_width, cfg.simclr_hidden),
            nn.BatchNorm1d(cfg.simclr_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.simclr_hidden, cfg.simclr_dim),
        )
        for module in (self.text, self.fusion, self.vision_proj, self.text_proj, self.itm_head,
                       self.emo_proj, self.simclr_projector):
            module.apply(init_bert_weights)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``images [N, 3, S, S]`` (normalised) -> ViT tokens ``[N, 1+P, Dv]``, CLS first."""
        return self.vision.forward_features(images)

    def image_feature(self, image_cls: torch.Tensor) -> torch.Tensor:
        """``[N, Dv]`` CLS -> L2-normalised ITA feature ``[N, E]``."""
        return F.normalize(self.vision_proj(image_cls), dim=-1)

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images [N, 3, S, S]`` -> ``(tokens [N, 1+P, Dv], feature [N, E] normalised)``."""
        tokens = self.image_tokens(images)
        return tokens, self.image_feature(tokens[:, 0])

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids, mask [N, T]`` -> ``(tokens [N, T, Dt], feature [N, E] normalised)``.

        The tokens come from the text-only layers; they are the fusion encoder's input.
        """
        if input_ids.shape[1] > self.cfg.max_position:
            raise ConfigError(
                f"text of {input_ids.shape[1]} tokens exceeds model.max_position "
                f"{self.cfg.max_position}; lower data.max_text_tokens or raise model.max_position"
            )
        tokens = self.text(input_ids, attention_mask)
        return tokens, F.normalize(self.text_proj(tokens[:, 0]), dim=-1)

    def itm_logits(
        self, text_tokens: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Matching logits ``[N, 2]`` (index 1 = match) of N (text, image) pairs.

        ``text_tokens [N, T, Dt]`` and ``attention_mask [N, T]`` from :meth:`encode_text`,
        ``image_tokens [N, 1+P, Dv]`` from :meth:`encode_image`.
        """
        fused = self.fusion(text_tokens, attention_mask, image_tokens)
        return self.itm_head(fused[:, 0])

    def emotion_logits(self, image_cls: torch.Tensor) -> torch.Tensor:
        """Student emotion logits ``[N, 7K]`` from the ViT CLS ``[N, Dv]`` (anchor order)."""
        return self.emo_proj(image_cls)

    def simclr(self, image_cls: torch.Tensor) -> torch.Tensor:
        """SimCLR projection ``[N, simclr_dim]`` (not normalised) of the ViT CLS ``[N, Dv]``."""
        return self.simclr_projector(image_cls)

    def clamp_temperature(self) -> None:
        """Keep the ITA temperature in ALBEF's range (called once per training step)."""
        with torch.no_grad():
            self.temperature.clamp_(*TEMPERATURE_RANGE)

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        teacher_logits: torch.Tensor | None = None,
        loss_cfg: LossConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training losses of one batch; ``"loss"`` is the total to back-propagate."""
        from srs_core.model.objective import training_losses

        return training_losses(self, batch, teacher_logits, loss_cfg, generator)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or compiled) wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's wrapper
            model = model._orig_mod
        else:
            return model


WEIGHT_DECAY_RULES = ("paper", "exempt_embeddings")


def param_groups(model: nn.Module, weight_decay: float, rule: str = "paper") -> list[dict]:
    """AdamW groups: no weight decay on 1-d parameters (biases, norms) and ``*.bias``.

    ``paper`` is exactly that (timm's ``add_weight_decay`` in the authors' code, which also
    decays the temperature, cls token and position embeddings); ``exempt_embeddings`` also
    exempts those three, as ALBEF's ViT asks.
    """
    if rule not in WEIGHT_DECAY_RULES:
        raise ConfigError(f"weight-decay rule {rule!r} is not one of {WEIGHT_DECAY_RULES}")
    exempt = ("cls_token", "pos_embed", "temperature") if rule == "exempt_embeddings" else ()
    decay, no_decay = [], []
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim == 1 or leaf == "bias" or leaf in exempt:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """SimCLR projector's BatchNorm -> SyncBatchNorm on GPUs (call before wrapping in DDP).

    SyncBatchNorm has no CPU implementation (DDP refuses it), so on CPU (gloo) the model is
    returned unchanged and each process normalises with its own batch statistics.
    """
    if torch.device(device).type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
