"""Which vocabulary and casing a run's tokenizer uses: given, from ``model.text_init``, or built."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from srs_core import store
from srs_core.config import Config
from srs_core.data.examples import Example
from srs_core.errors import ConfigError
from srs_core.model.tokenizer import build_vocab

log = logging.getLogger(__name__)


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
