"""Library-wide suggestion: index build -> suggest -> library metrics on tiny demo data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from library_setup import tiny_library

from srs_core.data.examples import context_texts
from srs_core.data.ser30k import EMOTIONS
from srs_core.data.sticker_sets import read_sticker_set
from srs_core.data.stickerchat import iter_dialogs
from srs_core.library import (
    Searcher,
    StickerIndex,
    Suggester,
    ann_recall,
    library_metrics,
    library_sets,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory):
    return tiny_library(tmp_path_factory.getbasetemp() / "tiny-library")


@pytest.fixture(scope="module")
def suggester(lib) -> Suggester:
    return Suggester.open(lib.checkpoint, lib.index)


def _dialogs(lib, split: str = "test") -> list:
    return [(context_texts(d), d.sticker_set_id, d.sticker_id)
            for d in iter_dialogs(lib.stickerchat, split)]


def test_index_holds_every_sticker_of_every_set(lib) -> None:
    index = StickerIndex.load(lib.index)
    expected = {(s, t) for s in library_sets(lib.stickerchat)
                for t in read_sticker_set(lib.stickerchat, s)}
    assert set(zip(index.set_ids.tolist(), index.sticker_ids.tolist(), strict=True)) == expected
    assert len(index) == len(expected) == lib.build_summary["stickers"]
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)
    assert index.emotions.shape == (len(index), len(EMOTIONS))
    np.testing.assert_allclose(index.emotions.sum(1), 1.0, atol=1e-5)
    assert index.meta["emotion_source"] == "student" and index.meta["checkpoint_sha256"]


def test_suggest_top_k_with_explanations_restrictions_and_diversity(lib, suggester) -> None:
    context = ["今天 真 开心", "哈哈 好 的"]
    [plain] = suggester.suggest([context], k=5, n=20)
    assert len(plain["suggestions"]) == 5
    assert plain["polarity"]["label"] in ("positive", "negative", "neutral")
    itm = [s["itm"] for s in plain["suggestions"]]
    assert itm == sorted(itm, reverse=True)  # reranked by ITM
    for s in plain["suggestions"]:
        assert s["emotion"] in EMOTIONS and 0.0 < s["emotion_probability"] <= 1.0
    [diverse] = suggester.suggest([context], k=5, n=60, per_set=1)
    sets = [s["set_id"] for s in diverse["suggestions"]]
    assert len(sets) == len(set(sets)) == 5
    some = sorted({s["set_id"] for s in plain["suggestions"]})[:1]
    [within] = suggester.suggest([context], k=3, n=20, sets=some)
    assert {s["set_id"] for s in within["suggestions"]} == set(some)


def test_rerank_scores_equal_the_per_pair_itm_head(lib, suggester) -> None:
    """The shared-work rerank (groups of contexts, padded ragged lists) scores each pair as
    ``itm_logits`` does on that pair alone."""
    import torch

    from srs_core.library import ImageTokens, itm_scores

    dialogs = _dialogs(lib)[:5]
    tokens, mask, _ = suggester.encode([u for u, _, _ in dialogs])
    rows = suggester.index.rows
    candidates = [rows[[3, 1, 4, 1, 5]].tolist(), [], rows[[9, 2]].tolist(),
                  rows[[6, 5, 3, 5]].tolist(), rows[[8]].tolist()]
    images = ImageTokens(suggester.loaded.model, suggester.cache, suggester.loaded.device)
    shared = itm_scores(suggester.loaded.model, tokens, mask, candidates, images,
                        pairs_per_batch=10)  # 2 contexts per group
    model = suggester.loaded.model
    for b, chosen in enumerate(candidates):
        assert shared[b].shape == (len(chosen),)
        for j, row in enumerate(chosen):
            with torch.no_grad():
                alone = model.itm_logits(tokens[b:b + 1], mask[b:b + 1], images.get([row]))
            assert shared[b][j] == pytest.approx(float(alone[0, 1]), abs=1e-4)


def test_library_metrics_match_a_brute_force_ranking(lib, suggester) -> None:
    dialogs = _dialogs(lib)[:12]
    metrics = library_metrics(suggester, dialogs, ns=(5, 20), ks=(1, 5, 10), progress=False)
    index = suggester.index
    _, _, features = suggester.encode([u for u, _, _ in dialogs])
    scores = features @ index.embeddings.T
    ranks = np.array([(scores[i] >= scores[i, index.position(s, t)]).sum()
                      for i, (_, s, t) in enumerate(dialogs)])
    assert metrics["ita"]["R@10"] == pytest.approx(np.mean(ranks <= 10))
    assert metrics["ita"]["MRR"] == pytest.approx(np.mean(1 / ranks))
    assert metrics["stickers"] == len(index) and metrics["dialogs"] == 12
    assert metrics["chance"]["R@10"] == pytest.approx(10 / len(index))
    # Reranking only reorders the top-N: an answer there stays there, one outside stays out.
    assert metrics["rerank@5"]["R@5"] == pytest.approx(metrics["ita"]["R@5"])


def test_ann_search_recall_against_exact(suggester) -> None:
    exact = suggester.searcher
    queries = suggester.index.embeddings[:20]
    assert ann_recall(exact, exact, queries, 10) == 1.0
    hnsw = Searcher(suggester.index.embeddings, "hnsw")
    assert ann_recall(exact, hnsw, queries, 10) > 0.9


def test_evaluate_with_library_keeps_the_protocol_keys(lib, tmp_path: Path) -> None:
    from srs_core.config import load_config
    from srs_core.evaluate import evaluate

    cfg = load_config(preset="tiny", overrides=[f"data.stickerchat={lib.stickerchat}",
                                                "eval.batch_size=16"])
    plain = evaluate(cfg, lib.checkpoint, "test", str(tmp_path / "plain"))
    with_library = evaluate(cfg, lib.checkpoint, "test", str(tmp_path / "lib"),
                            library=lib.index)
    for key, value in plain.items():
        if key not in ("seconds", "dialogs_per_s"):
            assert with_library[key] == pytest.approx(value)
    saved = json.loads((tmp_path / "lib" / "metrics.json").read_text())
    assert set(saved["library"]) >= {"ita", "rerank@20", "rerank@50", "rerank@100", "chance"}
    assert with_library["library_ita_R@10"] == saved["library"]["ita"]["R@10"]
    assert "library" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())
    from srs_core.report import evaluation_report

    page = evaluation_report(str(tmp_path / "lib"), lib.stickerchat, examples=0)
    assert "Library metrics" in page and "ITA top-50 reranked by ITM" in page


def test_library_refuses_unknown_sets_and_n_below_k(suggester) -> None:
    """No empty answer for a set the index lacks, no silent widening of n to k."""
    from srs_core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown set id"):
        suggester.suggest([["好"]], k=2, n=5, sets=[987654321])
    with pytest.raises(ConfigError, match="n 3 is smaller than k 5"):
        suggester.suggest([["好"]], k=5, n=3)
    with pytest.raises(ConfigError, match="k must be >= 1"):
        suggester.suggest([["好"]], k=0)


def test_long_utterances_and_contexts_are_cut_before_tokenisation(suggester, caplog) -> None:
    """A long utterance is cut to its last MAX_UTTERANCE_CHARS characters (what the tokenizer
    keeps of it anyway), a long context to its latest MAX_CONTEXT_UTTERANCES: same answer as
    the cut context, with a named warning in the log and in the answer."""
    import logging

    from srs_core.data import limits

    caplog.set_level(logging.WARNING)
    tail = "开心" * (limits.MAX_UTTERANCE_CHARS // 2)
    long = ["难过" * 20_000 + tail]  # 80k characters: seconds to tokenise before the limit
    [cut] = suggester.suggest([long], k=3, n=10)
    [same] = suggester.suggest([[tail]], k=3, n=10)
    assert cut["suggestions"] == same["suggestions"] and "warnings" not in same
    assert any("utterance_truncated: 1 utterance" in w for w in cut["warnings"])
    assert "utterance_truncated" in caplog.text
    many = [f"第{i}句" for i in range(limits.MAX_CONTEXT_UTTERANCES + 5)]
    [dropped] = suggester.suggest([many], k=3, n=10)
    [latest] = suggester.suggest([many[5:]], k=3, n=10)
    assert dropped["suggestions"] == latest["suggestions"]
    assert any("context_truncated: the 5 oldest" in w for w in dropped["warnings"])
