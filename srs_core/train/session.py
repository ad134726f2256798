"""What training and evaluation both set up: sticker cache, examples, tokenizer, model.

A trained checkpoint (``best.pt``) is self-contained: model weights, the model config, the
vocabulary text and the anchor-logit count, so evaluation needs nothing but its URI and data.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from srs_core import store
from srs_core.config import Config, ModelConfig
from srs_core.data.report import Report
from srs_core.data.sticker_cache import StickerCache, build_sticker_cache
from srs_core.data.stickerchat import SPLITS, iter_dialogs
from srs_core.errors import ConfigError
from srs_core.model.tokenizer import build_vocab, encode_contexts, load_tokenizer
from srs_core.train.checkpoint import load_torch
from srs_core.train.data import Example, context_texts, load_examples

log = logging.getLogger(__name__)


def cache_uri(cfg: Config) -> str:
    return cfg.data.cache or store.join(cfg.train.output, "sticker-cache")


def prepare_sticker_cache(cfg: Config, report: Report) -> StickerCache:
    """Decode every set used by any split once (train, val and test share the cache)."""
    answers: set[tuple[int, int]] = set()
    for split in SPLITS:
        quiet = Report()  # dialog problems are counted when the examples are loaded
        for dialog in iter_dialogs(cfg.data.stickerchat, split, report=quiet,
                                   limit=cfg.data.max_dialogs):
            answers.add((dialog.sticker_set_id, dialog.sticker_id))
    return build_sticker_cache(
        cfg.data.stickerchat, {s for s, _ in answers}, cache_uri(cfg), cfg.model.image_size,
        report=report, answers=answers,
    )


class Tokenizer:
    """Turns a batch of contexts into ``input_ids``/``attention_mask`` ``[B, T]``."""

    def __init__(self, vocab_text: str, max_tokens: int, lowercase: bool = False) -> None:
        self.vocab_text = vocab_text
        self.max_tokens = max_tokens
        self.lowercase = lowercase
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "vocab.txt"
            path.write_text(vocab_text, encoding="utf-8")
            self._tokenizer = load_tokenizer(path, lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def __call__(self, contexts: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_contexts(self._tokenizer, contexts, self.max_tokens)


def resolve_lowercase(cfg: Config) -> bool:
    """Whether the tokenizer lowercases (and strips accents): the ``do_lower_case`` of
    ``<model.text_init>/tokenizer_config.json`` when there is one, else ``model.lowercase``
    (false: bert-base-chinese is cased, as in the authors' tokenizer)."""
    if cfg.model.text_init:
        config_uri = store.join(cfg.model.text_init, "tokenizer_config.json")
        if store.exists(config_uri):
            try:
                settings = json.loads(store.read_text(config_uri))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{config_uri}: not valid JSON ({exc})") from None
            value = settings.get("do_lower_case") if isinstance(settings, dict) else None
            if isinstance(value, bool):
                if value != cfg.model.lowercase:
                    log.info("tokenizer casing from %s: do_lower_case=%s", config_uri, value)
                return value
    return cfg.model.lowercase


def resolve_vocab(cfg: Config, examples: Sequence[Example]) -> str:
    """The vocabulary text: ``model.vocab``, ``<model.text_init>/vocab.txt``, or built here."""
    if cfg.model.vocab:
        return store.read_text(cfg.model.vocab)
    if cfg.model.text_init:
        return store.read_text(store.join(cfg.model.text_init, "vocab.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        build_vocab((text for ex in examples for text in ex.utterances), path,
                    lowercase=resolve_lowercase(cfg))
        return path.read_text(encoding="utf-8")


def build_model(model_cfg: ModelConfig, num_anchor_logits: int, vocab_size: int):
    from srs_core.model import SrsModel

    if vocab_size > model_cfg.vocab_size:
        raise ConfigError(
            f"the vocabulary has {vocab_size} tokens but model.vocab_size is "
            f"{model_cfg.vocab_size}; raise model.vocab_size"
        )
    return SrsModel(model_cfg, num_anchor_logits=num_anchor_logits)


@dataclass
class InferenceSession:
    model: torch.nn.Module
    examples: list[Example]
    cache: StickerCache
    tokenize: Tokenizer
    device: torch.device
    report: Report


def open_for_inference(cfg: Config, checkpoint_uri: str, split: str) -> InferenceSession:
    """Model from a ``best.pt``-style checkpoint plus the split's examples."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_torch(checkpoint_uri)
    model_cfg = ModelConfig(**checkpoint["model_config"])
    # Checkpoints written before the casing was recorded came from a lowercasing tokenizer.
    tokenize = Tokenizer(checkpoint["vocab"], cfg.data.max_text_tokens,
                         lowercase=bool(checkpoint.get("lowercase", True)))
    model = build_model(model_cfg, checkpoint["num_anchor_logits"], tokenize.vocab_size)
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    report = Report(strict=cfg.data.strict)
    cfg.model.image_size = model_cfg.image_size
    cfg.data.cache = cfg.data.cache or checkpoint.get("sticker_cache", "")
    cache = prepare_sticker_cache(cfg, report)
    examples = load_examples(cfg.data.stickerchat, split, cache, None, cfg.data.max_dialogs,
                             report, cfg.data.strict)
    if report.skipped:
        log.warning("%s: %d dialogs skipped: %s", split, report.skipped, dict(report.counts))
    return InferenceSession(model, examples, cache, tokenize, device, report)


__all__ = [
    "InferenceSession", "Tokenizer", "build_model", "cache_uri", "context_texts",
    "open_for_inference", "prepare_sticker_cache", "resolve_lowercase", "resolve_vocab",
]
