"""The sticker index: every library sticker's ITA image embedding and emotion, built once
from a checkpoint, and inner-product search over it (exact, or HNSW/IVF with faiss)."""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from srs_core import store
from srs_core.data.report import Report
from srs_core.data.ser30k import EMOTIONS
from srs_core.data.sticker_cache import StickerCache, build_sticker_cache, gather
from srs_core.data.transforms import eval_transform
from srs_core.errors import ConfigError, DataError
from srs_core.inference import load_model

log = logging.getLogger(__name__)

INDEX_VERSION = 1
SEARCH_KINDS = ("flat", "hnsw", "ivf")


def autocast(device: torch.device) -> Any:
    """bf16 on GPU, fp32 on CPU: how the library is encoded and reranked."""
    from srs_core.runtime.precision import autocast_context

    return autocast_context(device, "auto")


def pixels(cache: StickerCache, rows: Sequence[int], device: torch.device) -> torch.Tensor:
    """Sticker-cache rows as the model's input, exactly as evaluation feeds them."""
    raw = torch.from_numpy(gather(cache, rows)).permute(0, 3, 1, 2)
    return eval_transform()(raw).to(device)  # [N, 3, S, S]


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


_REBUILD = "rebuild it with `srs index build`"


def _load_npy(uri: str, ndim: int | None = None) -> np.ndarray:
    """An index array; a truncated, corrupt or misshapen file is a DataError naming it."""
    try:
        array = np.load(store.fetch(uri), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:  # cut short, not .npy, pickled objects
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a store or file-system error: it names the file itself
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{uri}: not a readable .npy array, truncated or corrupt ({reason}); "
                        f"{_REBUILD}") from None
    if not isinstance(array, np.ndarray) or (ndim is not None and array.ndim != ndim):
        shape = list(getattr(array, "shape", []))
        raise DataError(f"{uri}: expected a {ndim}-d array, got shape {shape}; {_REBUILD}")
    return array


def _load_json_object(uri: str, keys: Sequence[str] = ()) -> dict[str, Any]:
    """An index metadata file: a JSON object with ``keys``; else a DataError naming it."""
    try:
        value = json.loads(store.read_text(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{uri}: not valid JSON ({exc}); {_REBUILD}") from None
    except RecursionError:
        raise DataError(f"{uri}: JSON nested too deeply; {_REBUILD}") from None
    if not isinstance(value, dict):
        raise DataError(f"{uri}: expected a JSON object, got {type(value).__name__}; "
                        f"{_REBUILD}")
    missing = [key for key in keys if key not in value]
    if missing:
        raise DataError(f"{uri}: missing key(s) {', '.join(missing)}; {_REBUILD}")
    return value


def _int_ids(uri: str, ids: dict[str, Any], key: str) -> np.ndarray:
    values = ids[key]
    if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise DataError(f"{uri}: {key} must be a list of integers; {_REBUILD}")
    return np.asarray(values, np.int64)


def _emotion_distribution(logits: torch.Tensor) -> torch.Tensor:
    """``[N, 7K]`` anchor logits (class-major blocks) -> ``[N, 7]``: mean over K, softmax."""
    return logits.float().view(len(logits), len(EMOTIONS), -1).mean(-1).softmax(-1)


@torch.no_grad()
def _library_rows(cache: StickerCache) -> tuple[list[int], list[int], list[int]]:
    """``(set ids, sticker ids, cache rows)`` of every sticker, each set in its own order."""
    set_ids, sticker_ids, rows = [], [], []
    for set_id in sorted(cache.sets):
        seen = set()
        for i, sticker_id in enumerate(cache.sets[set_id]):
            if sticker_id not in seen:  # a mapping may list a sticker twice: index it once
                seen.add(sticker_id)
                set_ids.append(set_id)
                sticker_ids.append(sticker_id)
                rows.append(cache.offsets[set_id] + i)
    return set_ids, sticker_ids, rows


@torch.no_grad()
def _encode(model: torch.nn.Module, cache: StickerCache, rows: list[int], embed_dim: int,
            device: torch.device, batch_size: int, teacher: torch.nn.Module | None,
            anchors: torch.Tensor | None, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Normalised ITA embeddings ``[M, E]`` and emotion distributions ``[M, 7]`` of ``rows``
    (emotions from the teacher + anchors when given, else from the student's head)."""
    from tqdm import tqdm

    embeddings = np.zeros((len(rows), embed_dim), np.float32)
    emotions = np.zeros((len(rows), len(EMOTIONS)), np.float32)
    for start in tqdm(range(0, len(rows), batch_size), desc="index", unit="batch",
                      disable=not progress):
        chunk = rows[start:start + batch_size]
        images = pixels(cache, chunk, device)
        with autocast(device):
            cls = model.image_tokens(images)[:, 0]
            feature = model.vision_proj(cls)
            student = model.emotion_logits(cls)
        # Normalised again in fp32: a bf16 norm is off by ~1e-2, enough to reorder near ties.
        embeddings[start:start + len(chunk)] = F.normalize(feature.float(), dim=-1).cpu().numpy()
        if teacher is not None:
            from srs_core.emotion.teacher import emotion_targets

            logits = emotion_targets(teacher, anchors, images[None])[0]
        else:
            logits = student
        emotions[start:start + len(chunk)] = _emotion_distribution(logits).cpu().numpy()
    return embeddings, emotions


def _write_index(out_uri: str, embeddings: np.ndarray, emotions: np.ndarray,
                 ids: tuple[list[int], list[int], list[int]], meta: dict[str, Any]) -> None:
    """The index files; ``index.json`` last, so an index that has it is complete."""
    _save_npy(store.join(out_uri, "embeddings.npy"), embeddings)
    _save_npy(store.join(out_uri, "emotions.npy"), emotions)
    set_ids, sticker_ids, rows = ids
    store.write_text(store.join(out_uri, "ids.json"), json.dumps(
        {"set_ids": set_ids, "sticker_ids": sticker_ids, "rows": rows}))
    store.write_text(store.join(out_uri, "index.json"), json.dumps(meta, indent=2))


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
    if bool(teacher_uri) != bool(anchors_uri):
        raise ConfigError("the teacher's emotions need both --teacher and --anchors")
    started = time.time()
    loaded = load_model(checkpoint_uri, device)
    cache_uri = cache_uri or store.join(out_uri, "sticker-cache")
    report = Report()
    cache = build_sticker_cache(stickerchat_root, library_sets(stickerchat_root), cache_uri,
                                loaded.model_cfg.image_size, report=report)
    teacher = anchors = None
    if teacher_uri:
        from srs_core.emotion.teacher import load_teacher

        teacher = load_teacher(teacher_uri, loaded.device)
        anchors = torch.from_numpy(_load_npy(anchors_uri)).float().to(loaded.device)
    set_ids, sticker_ids, rows = _library_rows(cache)
    encode_started = time.time()
    embeddings, emotions = _encode(loaded.model, cache, rows, loaded.model_cfg.embed_dim,
                                   loaded.device, batch_size, teacher, anchors, progress)
    encode_seconds = time.time() - encode_started
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
    _write_index(out_uri, embeddings, emotions, (set_ids, sticker_ids, rows), meta)
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
        meta = _load_json_object(meta_uri)
        if meta.get("version") != INDEX_VERSION:
            raise DataError(f"{uri}: index version {meta.get('version')}, expected "
                            f"{INDEX_VERSION}; rebuild it with `srs index build`")
        ids_uri = store.join(uri, "ids.json")
        ids = _load_json_object(ids_uri, ("set_ids", "sticker_ids", "rows"))
        embeddings_uri = store.join(uri, "embeddings.npy")
        index = cls(
            np.ascontiguousarray(_load_npy(embeddings_uri, ndim=2), np.float32),
            _load_npy(store.join(uri, "emotions.npy"), ndim=2),
            _int_ids(ids_uri, ids, "set_ids"), _int_ids(ids_uri, ids, "sticker_ids"),
            _int_ids(ids_uri, ids, "rows"), meta,
        )
        if index.emotions.shape[1] != len(EMOTIONS):
            raise DataError(f"{uri}/emotions.npy: expected {len(EMOTIONS)} columns, got shape "
                            f"{list(index.emotions.shape)}; {_REBUILD}")
        lengths = {"embeddings.npy": len(index.embeddings), "emotions.npy": len(index.emotions),
                   "ids.json set_ids": len(index.set_ids),
                   "ids.json sticker_ids": len(index.sticker_ids), "ids.json rows": len(index.rows)}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{uri}: embeddings, emotions and ids disagree in length "
                            f"({', '.join(f'{k} {v}' for k, v in lengths.items())}); {_REBUILD}")
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


