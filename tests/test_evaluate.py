"""Evaluation: encoding each sticker once gives exactly the per-dialog scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from srs_core.config import load_config
from srs_core.data.examples import load_examples
from srs_core.data.sticker_cache import build_sticker_cache
from srs_core.data.stickerchat import iter_dialogs
from srs_core.data.synth import synthesize
from srs_core.evaluate import score_examples, score_examples_naive, sticker_chunks, summarize
from srs_core.metrics import rank_metrics
from srs_core.model.factory import build_model
from srs_core.model.tokenizer import ContextTokenizer
from srs_core.model.vocab import resolve_vocab


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    synthesize(out, seed=5, dialogs=60, sets=8, images=70)
    root = str(out / "stickerchat")
    cfg = load_config(preset="tiny", overrides=[f"data.stickerchat={root}"])
    sets = {d.sticker_set_id for d in iter_dialogs(root, "test")}
    cache = build_sticker_cache(root, sets, str(out / "cache"), cfg.model.image_size)
    examples = load_examples(root, "test", cache)
    tokenize = ContextTokenizer(resolve_vocab(cfg, examples), 64)
    torch.manual_seed(0)
    model = build_model(cfg.model, 28, tokenize.vocab_size).eval()
    return model, examples, cache, tokenize


def test_cached_scoring_equals_naive(setup) -> None:
    model, examples, cache, tokenize = setup
    device = torch.device("cpu")
    cached = score_examples(model, examples, cache, tokenize, device, batch_size=7,
                            progress=False)
    naive = score_examples_naive(model, examples, cache, tokenize, device)
    assert cached.itm.shape == (len(examples), 10)
    np.testing.assert_allclose(cached.itm, naive.itm, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cached.ita, naive.ita, rtol=1e-4, atol=1e-5)
    assert summarize(cached)["MAP"] == pytest.approx(rank_metrics(naive.itm)["MAP"], abs=1e-6)


@pytest.mark.parametrize("max_images", [1, 25])
def test_chunked_scoring_equals_naive(setup, max_images: int) -> None:
    """Small chunks (one set each, or a few sets): sorting, batching across sets and the
    per-chunk sticker memory give the per-dialog scores."""
    model, examples, cache, tokenize = setup
    device = torch.device("cpu")
    chunks = sticker_chunks(examples, max_images)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(examples)))
    if max_images == 1:
        assert len(chunks) == len({e.set_id for e in examples})
    else:
        assert 1 < len(chunks) < len({e.set_id for e in examples})
    cached = score_examples(model, examples, cache, tokenize, device, batch_size=5,
                            progress=False, max_images=max_images)
    naive = score_examples_naive(model, examples, cache, tokenize, device)
    np.testing.assert_allclose(cached.itm, naive.itm, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cached.ita, naive.ita, rtol=1e-4, atol=1e-5)


def test_summary_has_protocol_and_ita_metrics(setup) -> None:
    model, examples, cache, tokenize = setup
    scores = score_examples(model, examples[:5], cache, tokenize, torch.device("cpu"),
                            progress=False)
    metrics = summarize(scores)
    for key in ("R10@1", "R10@2", "R10@5", "R2@1", "MAP", "MRR", "P@1", "ITA_MAP"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["dialogs"] == 5


def test_untrained_model_scores_near_chance_not_above(setup, tmp_path: Path) -> None:
    """Gray padding and ties never favour the positive: a constant scorer gets rank 10."""
    model, examples, cache, tokenize = setup
    constant = np.zeros((len(examples), 10))
    assert rank_metrics(constant)["R10@1"] == 0.0
