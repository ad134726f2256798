"""What a run prepares before it reads examples: the sticker cache of every split's sets."""

from __future__ import annotations

from srs_core import store
from srs_core.config import Config
from srs_core.data.report import Report
from srs_core.data.sticker_cache import StickerCache, build_sticker_cache
from srs_core.data.stickerchat import SPLITS, iter_dialogs


def cache_uri(cfg: Config) -> str:
    """``data.cache``, or ``<train.output>/sticker-cache``."""
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
