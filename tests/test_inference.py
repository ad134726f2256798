"""Inference loading: a best.pt round trip, and the caller's config left as it was."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from srs_core.config import load_config
from srs_core.data.synth import synthesize
from srs_core.inference import load_model, open_for_inference
from srs_core.model.checkpoint import BestCheckpoint
from srs_core.model.factory import build_model
from srs_core.model.tokenizer import SPECIAL_TOKENS, ContextTokenizer
from srs_core.runtime.checkpoint import load_torch


def test_best_checkpoint_round_trip_and_open_for_inference(tmp_path: Path) -> None:
    synthesize(tmp_path / "data", seed=3, dialogs=24, sets=4, images=40)
    cfg = load_config(preset="tiny", overrides=[
        f"data.stickerchat={tmp_path / 'data' / 'stickerchat'}", f"train.output={tmp_path / 'run'}",
    ])
    vocab = "\n".join([*SPECIAL_TOKENS, "你", "好"]) + "\n"
    torch.manual_seed(0)
    model = build_model(cfg.model, 14, ContextTokenizer(vocab, 16).vocab_size)
    uri = str(tmp_path / "best.pt")
    BestCheckpoint(model=model.state_dict(), model_config=cfg.model, vocab=vocab,
                   num_anchor_logits=14, lowercase=False, step=3, epoch=1,
                   selected_on="val (strict protocol)", val={"MAP": 0.5},
                   sticker_cache=str(tmp_path / "cache")).save(uri)
    saved = load_torch(uri)
    assert list(saved) == ["model", "model_config", "vocab", "num_anchor_logits", "step", "epoch",
                           "selected_on", "val", "sticker_cache", "lowercase"]

    before = copy.deepcopy(cfg)
    session = open_for_inference(cfg, uri, "test")
    assert cfg == before  # the checkpoint's image size and cache went to a copy
    assert session.examples and session.tokenize.lowercase is False
    assert all(torch.equal(a, b) for a, b in zip(session.model.state_dict().values(),
                                                 model.state_dict().values(), strict=True))
    loaded = load_model(uri, "cpu")
    assert loaded.model_cfg == cfg.model and len(loaded.sha256) == 64
