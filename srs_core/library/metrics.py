"""Library-level evaluation: the rank of each dialog's answer among every sticker of the
index, by ITA alone and after reranking the ITA top-N with ITM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from srs_core.data.examples import clean_texts
from srs_core.errors import DataError
from srs_core.library.suggest import Suggester, itm_scores

LIBRARY_KS = (1, 5, 10, 50)
RERANK_NS = (20, 50, 100)


def _rank_summary(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["MRR"] = float(np.mean(1.0 / ranks))
    out["median_rank"] = float(np.median(ranks))
    return out


@torch.no_grad()
def library_metrics(
    suggester: Suggester,
    dialogs: Sequence[tuple[Sequence[str], int, int]],
    ns: Sequence[int] = RERANK_NS,
    ks: Sequence[int] = LIBRARY_KS,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """Rank of each dialog's answer among every sticker of the index.

    ``dialogs`` are ``(utterances, set_id, sticker_id)``. ``ita`` ranks the whole library by
    ITA similarity (exact, ties counted against the answer as in the strict protocol);
    ``rerank@N`` reorders the ITA top-N by ITM and keeps the ITA order after them, so an
    answer outside the top-N keeps its ITA rank (> N). Answers missing from the index are
    counted, not ranked.
    """
    from tqdm import tqdm

    index = suggester.index
    usable = [(clean_texts(u), index.position(s, t)) for u, s, t in dialogs]
    missing = sum(1 for _, p in usable if p is None)
    usable = [(u, p) for u, p in usable if p is not None]
    if not usable:
        raise DataError("no dialog's answer sticker is in the index; was it built from the "
                        "same StickerChat root?")
    top_n = min(max(ns), len(index))
    ita_ranks, rerank = np.zeros(len(usable)), {n: np.zeros(len(usable)) for n in ns}
    for start in tqdm(range(0, len(usable), batch_size), desc="library", unit="batch",
                      disable=not progress):
        chunk = usable[start:start + batch_size]
        tokens, mask, features = suggester.encode([u for u, _ in chunk])
        scores = features @ index.embeddings.T  # [B, M], exact
        answers = np.asarray([p for _, p in chunk])
        positive = scores[np.arange(len(chunk)), answers]
        ita_ranks[start:start + len(chunk)] = (scores >= positive[:, None]).sum(1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :top_n]
        itm = itm_scores(suggester.loaded.model, tokens, mask,
                         [index.rows[row].tolist() for row in top], suggester.images)
        for b in range(len(chunk)):
            i = start + b
            for n in ns:
                hit = np.flatnonzero(top[b, :n] == answers[b])
                if len(hit):
                    ours = itm[b][:n]
                    rerank[n][i] = (ours >= ours[hit[0]]).sum()  # itself included: rank >= 1
                else:
                    rerank[n][i] = max(ita_ranks[i], n + 1)
    size = len(index)
    result: dict[str, Any] = {
        "stickers": size, "dialogs": len(usable), "not_in_index": missing,
        "chance": {f"R@{k}": min(1.0, k / size) for k in ks},
        "ita": _rank_summary(ita_ranks, ks),
    }
    for n in ns:
        result[f"rerank@{n}"] = _rank_summary(rerank[n], ks)
    return result


def flatten_library_metrics(library: dict[str, Any]) -> dict[str, float]:
    """``library_ita_R@10``, ``library_rerank50_MRR``, ...: names a KFP Metrics can log."""
    flat = {}
    for method, values in library.items():
        if method == "ita" or method.startswith("rerank@"):
            name = method.replace("@", "")
            flat.update({f"library_{name}_{k}": float(v) for k, v in values.items()})
    flat["library_stickers"] = float(library["stickers"])
    return flat
