"""What training records besides checkpoints: the selection of ``best.pt`` and the history."""

from __future__ import annotations

import json
import logging

import torch

from srs_core import store
from srs_core.config import Config
from srs_core.data.examples import load_examples
from srs_core.data.report import Report
from srs_core.data.sticker_cache import StickerCache
from srs_core.evaluate import TIES, Tokenize, score_examples, summarize
from srs_core.tracking import log_record

log = logging.getLogger(__name__)


class Selection:
    """Which split and protocol choose ``best.pt``, and when.

    ``strict``: validation MAP after every epoch. ``paper``: as the authors' code, *test* MAP
    under their protocol, ``eval.paper_evals_per_epoch`` times per epoch and after each.
    """

    def __init__(self, cfg: Config, cache: StickerCache, tokenize: Tokenize,
                 device: torch.device, steps_per_epoch: int, report: Report) -> None:
        self.cfg, self.cache, self.tokenize, self.device = cfg, cache, tokenize, device
        paper = cfg.eval.protocol == "paper"
        split = "test" if paper else "val"
        self.protocol = "paper" if paper else "strict"
        self.label = f"{split} ({self.protocol} protocol)"
        self.history_key = "val" if not paper else "test_paper"
        self.every = max(1, steps_per_epoch // cfg.eval.paper_evals_per_epoch) if paper else 0
        if paper:
            log.warning("eval.protocol=paper: best.pt is selected on the TEST split, as the "
                        "authors did; its test figures are not a held-out estimate")
        self.examples = load_examples(cfg.data.stickerchat, split, cache, None,
                                      cfg.data.max_dialogs, report, cfg.data.strict,
                                      protocol=self.protocol)

    def due_mid_epoch(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        scores = score_examples(model, self.examples, self.cache, self.tokenize, self.device,
                                batch_size=self.cfg.eval.batch_size, progress=False)
        return summarize(scores, TIES[self.protocol])


class History:
    """Appends JSON lines to ``history.jsonl`` (master only), keeping what was already there."""

    def __init__(self, uri: str, enabled: bool) -> None:
        self.uri, self.enabled = uri, enabled
        self.lines: list[str] = []
        if enabled and store.exists(uri):
            self.lines = store.read_text(uri).splitlines()

    def add(self, record: dict) -> None:
        if self.enabled:
            self.lines.append(json.dumps(record))
            log_record(record)  # to the active MLflow run, if any (srs_core.tracking)

    def flush(self) -> None:
        if self.enabled:
            store.write_text(self.uri, "\n".join(self.lines) + "\n")
