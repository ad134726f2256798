"""Opening a trained selector for inference: a ``best.pt`` -> model + tokenizer (+ its data).

Evaluation, the library (index, suggestions), serving and the reports load a model here and
only here; the format itself belongs to :class:`srs_core.model.checkpoint.BestCheckpoint`.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass

import torch

from srs_core import store
from srs_core.config import Config, DataConfig, ModelConfig
from srs_core.data.examples import Example, load_examples
from srs_core.data.prepare import prepare_sticker_cache
from srs_core.data.report import Report
from srs_core.data.sticker_cache import StickerCache
from srs_core.model.checkpoint import BestCheckpoint
from srs_core.model.tokenizer import ContextTokenizer
from srs_core.runtime.device import select_device

log = logging.getLogger(__name__)


def file_sha256(uri: str) -> str:
    """Content hash of a stored object: ties an index to the checkpoint that embedded it."""
    digest = hashlib.sha256()
    with store.fetch(uri).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(best: BestCheckpoint, max_tokens: int,
          device: torch.device) -> tuple[torch.nn.Module, ContextTokenizer]:
    tokenize = best.tokenizer(max_tokens)
    model = best.build(tokenize.vocab_size)
    model.to(device).eval()
    return model, tokenize


@dataclass
class LoadedModel:
    """A ``best.pt`` ready for inference, with what identifies it."""

    model: torch.nn.Module
    tokenize: ContextTokenizer
    device: torch.device
    model_cfg: ModelConfig
    checkpoint: str
    sha256: str


def load_model(checkpoint_uri: str, device: torch.device | str | None = None,
               max_text_tokens: int = 0) -> LoadedModel:
    """Model and tokenizer from a self-contained ``best.pt``, in eval mode on ``device`` (by
    default the GPU when there is one)."""
    device = torch.device(device) if device else select_device()
    best = BestCheckpoint.load(checkpoint_uri)
    # The training length is not recorded; the default is what the presets train with,
    # bounded by the model's positions so that a long context is cut, never an error.
    tokens = max_text_tokens or min(DataConfig().max_text_tokens, best.model_config.max_position)
    model, tokenize = _open(best, tokens, device)
    return LoadedModel(model, tokenize, device, best.model_config, checkpoint_uri,
                       file_sha256(checkpoint_uri))


@dataclass
class InferenceSession:
    """A loaded model with a split's examples and the sticker cache they index."""

    model: torch.nn.Module
    examples: list[Example]
    cache: StickerCache
    tokenize: ContextTokenizer
    device: torch.device
    report: Report


def open_for_inference(cfg: Config, checkpoint_uri: str, split: str) -> InferenceSession:
    """Model from a ``best.pt`` plus the split's examples (``cfg`` is left as it is).

    Images are cached at the checkpoint's image size, in ``data.cache`` or else the cache
    training used.
    """
    device = select_device()
    best = BestCheckpoint.load(checkpoint_uri)
    model, tokenize = _open(best, cfg.data.max_text_tokens, device)
    report = Report(strict=cfg.data.strict)
    cfg = copy.deepcopy(cfg)
    cfg.model.image_size = best.model_config.image_size
    cfg.data.cache = cfg.data.cache or best.sticker_cache
    cache = prepare_sticker_cache(cfg, report)
    examples = load_examples(cfg.data.stickerchat, split, cache, None, cfg.data.max_dialogs,
                             report, cfg.data.strict)
    if report.skipped:
        log.warning("%s: %d dialogs skipped: %s", split, report.skipped, dict(report.counts))
    return InferenceSession(model, examples, cache, tokenize, device, report)
