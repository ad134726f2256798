"""Building an SRS run, one piece per function: data, tokenizer, emotion teacher, model."""

from __future__ import annotations

import logging

import numpy as np
import torch

from srs_core import store
from srs_core.artifacts import SentimentOutputs
from srs_core.config import Config
from srs_core.data.examples import Example, load_examples
from srs_core.data.prepare import cache_uri, prepare_sticker_cache
from srs_core.data.report import Report
from srs_core.data.sticker_cache import StickerCache, load_sticker_cache
from srs_core.emotion.anchors import load_anchors
from srs_core.emotion.teacher import load_teacher
from srs_core.errors import ConfigError
from srs_core.model import SrsModel, convert_sync_batchnorm
from srs_core.model.factory import build_model
from srs_core.model.loaders import load_albef_vision, load_bert_text
from srs_core.model.tokenizer import ContextTokenizer
from srs_core.model.vocab import resolve_lowercase, resolve_vocab
from srs_core.runtime.checkpoint import load_torch
from srs_core.runtime.distributed import DistInfo, barrier
from srs_core.runtime.trainer import compile_module, wrap_ddp

log = logging.getLogger(__name__)


def load_train_examples(cfg: Config, dist: DistInfo,
                        report: Report) -> tuple[StickerCache, list[Example]]:
    """The sticker cache (rank 0 builds it, the others wait) and the training split."""
    if dist.is_master:
        prepare_sticker_cache(cfg, report)
    barrier()
    cache = load_sticker_cache(cache_uri(cfg))
    polarity = None
    if cfg.data.sentiment:
        from srs_core.sentiment.run import read_polarity

        polarity = read_polarity(SentimentOutputs(cfg.data.sentiment).split("train"))
    examples = load_examples(cfg.data.stickerchat, "train", cache, polarity,
                             cfg.data.max_dialogs, report, cfg.data.strict)
    if report.counts:
        log.warning("data problems (counted, skipped): %s", dict(report.counts))
    return cache, examples


def build_tokenizer(cfg: Config, dist: DistInfo, examples: list[Example],
                    vocab_uri: str) -> ContextTokenizer:
    """The run's tokenizer; rank 0 writes its vocabulary to ``vocab_uri`` once (a resumed run
    reads it back, so the token ids never change)."""
    if dist.is_master and not store.exists(vocab_uri):
        store.write_text(vocab_uri, resolve_vocab(cfg, examples))
    barrier()
    return ContextTokenizer(store.read_text(vocab_uri), cfg.data.max_text_tokens,
                            lowercase=resolve_lowercase(cfg))


def load_emotion(cfg: Config, device: torch.device):
    """Frozen teacher and anchors ``[7K, 2048]``, or ``(None, None)`` when unused."""
    if not cfg.loss.emotion:
        return None, None
    if not cfg.emotion.teacher or not cfg.emotion.anchors:
        raise ConfigError(
            "loss.emotion is on but emotion.teacher / emotion.anchors are not set; give both "
            "URIs (from `srs emotion train` and `srs emotion anchors`) or set loss.emotion=false"
        )
    anchors = load_anchors(cfg.emotion.anchors)
    teacher = load_teacher(cfg.emotion.teacher, device, cfg.emotion.memory_format)
    return teacher, torch.from_numpy(np.nan_to_num(anchors)).float().to(device)


def anchor_logit_count(cfg: Config, anchors: torch.Tensor | None) -> int:
    """Size of the emotion head: the anchors' rows, also when distillation is off."""
    if anchors is not None:
        return anchors.shape[0]
    if cfg.emotion.anchors:
        return load_anchors(cfg.emotion.anchors, mmap=True).shape[0]
    return 7 * cfg.emotion.k


def build_selector(cfg: Config, num_anchor_logits: int, vocab_size: int,
                   device: torch.device) -> SrsModel:
    """The selector with its pretrained initialisation (``model.vision_init``/``text_init``)."""
    model = build_model(cfg.model, num_anchor_logits, vocab_size)
    if cfg.model.vision_init:
        report = load_albef_vision(model, load_torch(cfg.model.vision_init),
                                   source=cfg.model.vision_init)
        log.info("vision init from %s: %s", cfg.model.vision_init, report)
    if cfg.model.text_init:
        report = load_bert_text(model, read_bert_weights(cfg.model.text_init),
                                source=cfg.model.text_init)
        log.info("text init from %s: %s", cfg.model.text_init, report)
    return model.to(device)


def read_bert_weights(root: str) -> dict:
    """State dict of a Hugging Face BERT directory (safetensors or pytorch_model.bin)."""
    safetensors_uri = store.join(root, "model.safetensors")
    if store.exists(safetensors_uri):
        from safetensors.torch import load_file

        return load_file(str(store.fetch(safetensors_uri)))
    return load_torch(store.join(root, "pytorch_model.bin"))


def distribute(model: SrsModel, cfg: Config,
               dist: DistInfo) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(model, trained)``: the model to save and evaluate, and the module to train with.

    In a job of several processes the SimCLR BatchNorm becomes SyncBatchNorm (on GPUs) and
    DDP is told to look for unused parameters whenever a loss term is off. ``train.compile``
    compiles the trained module, DDP included (see :func:`compile_module`).
    """
    trained = model
    if dist.world_size > 1:
        model = convert_sync_batchnorm(model, dist.device)
        every_term_on = cfg.loss.active_terms == cfg.loss.TERMS
        trained = wrap_ddp(model, dist, find_unused_parameters=not every_term_on)
    return model, compile_module(trained, cfg.train.compile, cfg.train.compile_backend)
