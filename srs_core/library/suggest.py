"""Two-stage suggestion: the context's ITA top-N from the index, reranked with the ITM head
(the fusion of the context's tokens with each sticker's image tokens), top-k with reasons."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from srs_core.data import limits
from srs_core.data.examples import clean_texts
from srs_core.data.ser30k import EMOTIONS
from srs_core.data.sticker_cache import StickerCache
from srs_core.errors import ConfigError
from srs_core.inference import LoadedModel, load_model
from srs_core.library.index import Searcher, StickerIndex, autocast, pixels
from srs_core.model.scoring import image_memory, match_scores

log = logging.getLogger(__name__)


class ImageTokens:
    """ViT tokens of sticker-cache rows, with an LRU of recently reranked stickers.

    Popular stickers come back in many suggestions; keeping ``capacity`` of their token
    tensors (65 x 768 floats each at the paper's size) saves a ViT pass per reuse.
    """

    def __init__(self, model: torch.nn.Module, cache: StickerCache, device: torch.device,
                 capacity: int = 0, batch_size: int = 128) -> None:
        self.model, self.cache, self.device = model, cache, device
        self.capacity, self.batch_size = capacity, batch_size
        self._lru: OrderedDict[int, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def get(self, rows: Sequence[int]) -> torch.Tensor:
        """Tokens ``[len(rows), 1+P, Dv]`` (float32) of the given rows, in order."""
        missing = [r for r in dict.fromkeys(rows) if r not in self._lru]
        fresh: dict[int, torch.Tensor] = {}
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            with autocast(self.device):
                tokens = self.model.image_tokens(pixels(self.cache, chunk, self.device))
            fresh.update(zip(chunk, tokens.float(), strict=True))
        out = torch.stack([fresh[r] if r in fresh else self._lru[r] for r in rows])
        if self.capacity:
            for r in rows:
                if r in self._lru:
                    self._lru.move_to_end(r)
            for r, tokens in fresh.items():
                self._lru[r] = tokens
            while len(self._lru) > self.capacity:
                self._lru.popitem(last=False)
        return out


@torch.no_grad()
def itm_scores(model: torch.nn.Module, text_tokens: torch.Tensor, mask: torch.Tensor,
               candidates: Sequence[Sequence[int]], images: ImageTokens,
               pairs_per_batch: int = 256) -> list[np.ndarray]:
    """ITM match logits of each context ``b`` with its candidate rows ``candidates[b]``.

    Every distinct row is encoded once for the whole batch of contexts; then a few contexts
    at a time (about ``pairs_per_batch`` pairs) go through the fusion encoder with its work
    shared as in evaluation (:func:`~srs_core.model.scoring.match_scores`: each sticker's
    cross-attention keys and values projected once per group, the text's first layer once per
    context). Shorter candidate lists are padded and the padding dropped.
    """
    width = max((len(rows) for rows in candidates), default=0)
    unique = list(dict.fromkeys(r for rows in candidates for r in rows))
    if not unique:
        return [np.zeros(0, np.float32) for _ in candidates]
    tokens = images.get(unique)
    where = {r: i for i, r in enumerate(unique)}
    group = max(1, pairs_per_batch // width)
    out: list[np.ndarray] = []
    for start in range(0, len(candidates), group):
        part = candidates[start:start + group]
        local = {r: i for i, r in enumerate(dict.fromkeys(r for rows in part for r in rows))}
        index = torch.zeros(len(part), width, dtype=torch.long)
        for b, rows in enumerate(part):
            index[b, :len(rows)] = torch.tensor([local[r] for r in rows], dtype=torch.long)
        chosen = torch.tensor([where[r] for r in local] or [0], device=tokens.device)
        context = slice(start, start + len(part))
        with autocast(images.device):
            memory = image_memory(model, tokens[chosen])
            logits = match_scores(model, text_tokens[context], mask[context], memory,
                                  index.to(tokens.device))
        logits = logits.float().cpu().numpy()
        out.extend(logits[b, :len(rows)] for b, rows in enumerate(part))
    return out


def polarity(utterances: Iterable[str]) -> dict[str, Any]:
    """cnsenti's counts over the context and a label (the explanation's first half)."""
    from srs_core.sentiment.scoring import score_text

    pos = neg = 0.0
    for text in utterances:
        scored = score_text(text)
        pos, neg = pos + float(scored["pos"]), neg + float(scored["neg"])
    label = "positive" if pos > neg else "negative" if neg > pos else "neutral"
    return {"pos": pos, "neg": neg, "label": label}


@dataclass(frozen=True)
class Query:
    """One context to suggest for, with its options (see :meth:`Suggester.suggest`)."""

    utterances: tuple[str, ...]
    k: int = 5
    n: int = 50
    sets: tuple[int, ...] = ()
    per_set: int = 0

    def __post_init__(self) -> None:
        # The CLI and the server check these first with their own wording; a library caller
        # gets the same rules instead of a silently widened or empty answer.
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.n < self.k:
            raise ConfigError(f"n {self.n} is smaller than k {self.k}: rerank at least as "
                              "many candidates as stickers returned")
        if self.per_set < 0:
            raise ConfigError(f"per_set must be >= 0 (0: no limit), got {self.per_set}")


class Suggester:
    """Two-stage suggestion over a library index: ITA top-N, ITM rerank, top-k."""

    def __init__(self, loaded: LoadedModel, index: StickerIndex, cache: StickerCache | None = None,
                 kind: str = "flat", token_cache: int = 0) -> None:
        from srs_core.data.sticker_cache import load_sticker_cache

        if index.meta.get("checkpoint_sha256") not in (None, loaded.sha256):
            raise ConfigError(
                f"the index was built with {index.meta.get('checkpoint')} (another checkpoint "
                f"than {loaded.checkpoint}): its embeddings do not match this model; rebuild "
                "it with `srs index build --checkpoint` of this model")
        self.loaded, self.index = loaded, index
        self.cache = cache if cache is not None else load_sticker_cache(index.meta["sticker_cache"])
        self.searcher = Searcher(index.embeddings, kind)
        self.known_sets = frozenset(np.unique(index.set_ids).tolist())
        self.images = ImageTokens(loaded.model, self.cache, loaded.device, capacity=token_cache)

    @classmethod
    def open(cls, checkpoint_uri: str, index_uri: str, kind: str = "flat",
             token_cache: int = 0, device: torch.device | str | None = None) -> Suggester:
        return cls(load_model(checkpoint_uri, device), StickerIndex.load(index_uri),
                   kind=kind, token_cache=token_cache)

    @torch.no_grad()
    def encode(self, contexts: Sequence[Sequence[str]]
               ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """``(text tokens [B, T, D], mask [B, T], ITA features [B, E] float32)``."""
        ids, mask = self.loaded.tokenize(contexts)
        ids, mask = ids.to(self.loaded.device), mask.to(self.loaded.device)
        with autocast(self.loaded.device):
            tokens, _ = self.loaded.model.encode_text(ids, mask)
        tokens = tokens.float()
        feature = F.normalize(self.loaded.model.text_proj(tokens[:, 0]), dim=-1)
        return tokens, mask, feature.cpu().numpy()

    def unknown_sets(self, sets: Iterable[int]) -> list[int]:
        """The ids of ``sets`` that no sticker of the index belongs to, in the order given."""
        return [s for s in dict.fromkeys(sets) if s not in self.known_sets]

    def retrieve(self, features: np.ndarray, n: int, sets: Sequence[int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` ``(ITA scores, index positions)`` per query, optionally within ``sets``."""
        if not sets:
            return self.searcher.search(features, n)
        # A restriction is a small subset: exact scoring of it beats filtering a global search.
        subset = np.flatnonzero(np.isin(self.index.set_ids, np.asarray(list(sets), np.int64)))
        if not len(subset):
            empty = np.zeros((len(features), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        scores = features @ self.index.embeddings[subset].T
        n = min(n, len(subset))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        return np.take_along_axis(scores, top, 1), subset[top]

    def suggest(self, contexts: Sequence[Sequence[str]], k: int = 5, n: int = 50,
                sets: Sequence[int] | None = None, per_set: int = 0,
                explain: bool = True) -> list[dict[str, Any]]:
        """For each context: its polarity and the top-``k`` stickers after reranking ``n``.

        ``per_set`` > 0 keeps at most that many stickers of one set (walking the reranked
        list); fewer than ``k`` come back when the ``n`` retrieved do not span enough sets.
        """
        return self.suggest_many([Query(tuple(c), k, n, tuple(sets or ()), per_set)
                                  for c in contexts], explain)

    def suggest_many(self, queries: Sequence[Query], explain: bool = True
                     ) -> list[dict[str, Any]]:
        """:meth:`suggest` for queries with their own options, scored as one batch (the
        server batches concurrent requests through this)."""
        for q in queries:
            unknown = self.unknown_sets(q.sets)
            if unknown:
                raise ConfigError(f"unknown set id(s) {', '.join(map(str, unknown))}: no "
                                  "sticker of the index belongs to them")
        # Cut to the documented limits before tokenisation (a 1 MB utterance took 44 s).
        bounded = [limits.bound_context(clean_texts(q.utterances)) for q in queries]
        contexts = [b.utterances for b in bounded]
        for i, text in enumerate(c.warning() for c in bounded):
            if text:
                log.warning("context %d: %s", i + 1, text)
        tokens, mask, features = self.encode(contexts)
        found: list[list[int]] = [[] for _ in queries]
        ita: list[list[float]] = [[] for _ in queries]
        open_queries = [i for i, q in enumerate(queries) if not q.sets]
        if open_queries:  # one search for every unrestricted query, at the largest n
            widest = max(max(queries[i].n, queries[i].k) for i in open_queries)
            scores, positions = self.retrieve(features[open_queries], widest)
            for row, i in enumerate(open_queries):
                wanted = max(queries[i].n, queries[i].k)
                keep = [(p, s) for p, s in zip(positions[row].tolist(), scores[row].tolist(),
                                               strict=True) if p >= 0][:wanted]
                found[i], ita[i] = [p for p, _ in keep], [s for _, s in keep]
        for i, q in enumerate(queries):
            if q.sets:
                scores, positions = self.retrieve(features[i:i + 1], max(q.n, q.k), q.sets)
                found[i], ita[i] = positions[0].tolist(), scores[0].tolist()
        itm = itm_scores(self.loaded.model, tokens, mask,
                         [self.index.rows[p].tolist() for p in found], self.images)
        results = []
        for b, (query, context) in enumerate(zip(queries, contexts, strict=True)):
            order = np.argsort(-itm[b], kind="stable")
            picked, per = [], {}
            for j in order:
                set_id = int(self.index.set_ids[found[b][j]])
                if query.per_set and per.get(set_id, 0) >= query.per_set:
                    continue
                per[set_id] = per.get(set_id, 0) + 1
                picked.append(j)
                if len(picked) == query.k:
                    break
            result = {
                "polarity": polarity(context) if explain else None,
                "suggestions": [self._describe(rank, found[b][j], float(itm[b][j]),
                                               float(ita[b][j]))
                                for rank, j in enumerate(picked, start=1)],
            }
            if bounded[b].warning():  # only when something was cut: the answer says so
                result["warnings"] = bounded[b].warning().split("; ")
            results.append(result)
        return results

    def _describe(self, rank: int, position: int, itm: float, ita: float) -> dict[str, Any]:
        emotions = self.index.emotions[position]
        top = int(np.argmax(emotions))
        return {
            "rank": rank,
            "set_id": int(self.index.set_ids[position]),
            "sticker_id": int(self.index.sticker_ids[position]),
            "itm": round(itm, 5),
            "match_probability": round(1.0 / (1.0 + math.exp(-itm)), 5) if itm > -60 else 0.0,
            "ita": round(ita, 5),
            "emotion": EMOTIONS[top],
            "emotion_probability": round(float(emotions[top]), 4),
        }
