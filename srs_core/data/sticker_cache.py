"""A compact cache of decoded sticker images, built once per data set and image size.

The reference code loads every candidate sticker from its own ``.npy`` file at every step
(30 images per dialog). Instead, every sticker of every set the dialogs use is decoded once,
resized to the model's image size and stored as one ``uint8`` array ``[N, S, S, 3]`` plus an
index; training and evaluation then read rows of a memory-mapped array.

Layout under the cache URI::

    stickers.npy   uint8 [N, S, S, 3]; row 0 is the gray (127) padding image
    index.json     {"image_size": S, "source": ..., "sets": {"<set_id>": [sticker ids]},
                    "offsets": {"<set_id>": first row of the set}, "skipped": {...}}

``index.json`` is written last, so a cache with an index is complete; an interrupted build is
simply redone.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from srs_core import store
from srs_core.data.report import Report
from srs_core.data.stickerchat import GRAY, build_candidates, load_sticker, read_sticker_set
from srs_core.errors import DataError

log = logging.getLogger(__name__)

PAD_ROW = 0
FORMAT_VERSION = 1


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``[H, W, 3] uint8`` -> ``[size, size, 3] uint8`` (bicubic, aspect ratio not kept)."""
    if image.shape[:2] == (size, size):
        return image
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


@dataclass
class StickerCache:
    """Decoded stickers of all sets, addressed by (set id, sticker id)."""

    images: np.ndarray  # [N, S, S, 3] uint8 (memory-mapped)
    sets: dict[int, list[int]]  # set id -> sticker ids in emoji_mapping order
    offsets: dict[int, int]  # set id -> row of its first sticker

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def has_set(self, set_id: int) -> bool:
        return set_id in self.sets

    def row(self, set_id: int, sticker_id: int) -> int:
        order = self.sets[set_id]
        try:
            return self.offsets[set_id] + order.index(sticker_id)
        except ValueError:
            raise DataError(f"sticker {sticker_id} is not in set {set_id}") from None

    def candidate_rows(self, set_id: int, sticker_id: int, n: int = 10) -> list[int]:
        """Rows of the candidates (positive first; PAD_ROW where the set is too small)."""
        if set_id not in self.sets:
            raise DataError(f"sticker set {set_id} is not in the sticker cache")
        ids = build_candidates(sticker_id, self.sets[set_id], n)
        start = self.offsets[set_id]
        positions = {sid: i for i, sid in enumerate(self.sets[set_id])}
        return [PAD_ROW if sid is None else start + positions[sid] for sid in ids]


def _decode_set(
    root: str, set_id: int, order: list[int], out: np.ndarray
) -> list[tuple[str, str]]:
    """Decode one set into ``out``; a sticker that fails makes the whole set unusable."""
    problems: list[tuple[str, str]] = []
    size = out.shape[1]
    for i, sticker_id in enumerate(order):
        try:
            out[i] = resize_square(load_sticker(root, set_id, sticker_id), size)
        except DataError as exc:
            problems.append(("bad_sticker", str(exc)))
    return problems


def _cache_is_current(cache_uri: str, root: str, image_size: int, wanted: list[int]) -> bool:
    index_uri = store.join(cache_uri, "index.json")
    if not store.exists(index_uri):
        return False
    index = json.loads(store.read_text(index_uri))
    known = {int(s) for s in index["sets"]} | {int(s) for s in index.get("skipped", {})}
    return (
        index.get("version") == FORMAT_VERSION
        and index.get("image_size") == image_size
        and index.get("source") == root
        and set(wanted) <= known
    )


def build_sticker_cache(
    stickerchat_root: str,
    set_ids: Iterable[int],
    cache_uri: str,
    image_size: int,
    report: Report | None = None,
    workers: int = 8,
) -> StickerCache:
    """Decode every sticker of ``set_ids`` into ``cache_uri`` unless a matching cache is there.

    Sets that cannot be read (missing mapping, a broken sticker) are skipped and counted in
    ``report``; their dialogs are skipped later. Memory stays bounded: images are decoded
    straight into a memory-mapped file.
    """
    from tqdm import tqdm

    wanted = sorted(set(set_ids))
    if _cache_is_current(cache_uri, stickerchat_root, image_size, wanted):
        log.info("reusing sticker cache %s", cache_uri)
        return load_sticker_cache(cache_uri)
    report = report if report is not None else Report()
    orders: dict[int, list[int]] = {}
    skipped: dict[str, str] = {}
    for set_id in wanted:
        try:
            orders[set_id] = read_sticker_set(stickerchat_root, set_id)
        except DataError as exc:
            report.add("unknown_set", f"npy_stickers/{set_id}", str(exc))
            skipped[str(set_id)] = str(exc)
    offsets, row = {}, 1
    for set_id, order in orders.items():
        offsets[set_id], row = row, row + len(order)
    if len(orders) == 0:
        raise DataError(f"no usable sticker set under {stickerchat_root}/npy_stickers")
    with tempfile.TemporaryDirectory(dir=store.cache_root()) as tmp:
        local = Path(tmp) / "stickers.npy"
        images = np.lib.format.open_memmap(
            local, mode="w+", dtype=np.uint8, shape=(row, image_size, image_size, 3)
        )
        images[PAD_ROW] = GRAY
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            jobs = {
                set_id: pool.submit(
                    _decode_set, stickerchat_root, set_id, order,
                    images[offsets[set_id]:offsets[set_id] + len(order)],
                )
                for set_id, order in orders.items()
            }
            for set_id, job in tqdm(jobs.items(), unit="set", desc="sticker cache"):
                problems = job.result()
                for problem, detail in problems:
                    report.add(problem, f"npy_stickers/{set_id}", detail)
                if problems:
                    skipped[str(set_id)] = problems[0][1]
                    del orders[set_id], offsets[set_id]
        images.flush()
        del images
        if not orders:
            raise DataError(f"no usable sticker set under {stickerchat_root}/npy_stickers")
        store.upload(local, store.join(cache_uri, "stickers.npy"))
    index = {
        "version": FORMAT_VERSION,
        "image_size": image_size,
        "source": stickerchat_root,
        "sets": {str(k): v for k, v in orders.items()},
        "offsets": {str(k): v for k, v in offsets.items()},
        "skipped": skipped,
    }
    store.write_text(store.join(cache_uri, "index.json"), json.dumps(index))
    log.info("sticker cache %s: %d sets, %d skipped", cache_uri, len(orders), len(skipped))
    return load_sticker_cache(cache_uri)


def load_sticker_cache(cache_uri: str) -> StickerCache:
    """Open a built cache; the image array is memory-mapped from a local copy."""
    index_uri = store.join(cache_uri, "index.json")
    if not store.exists(index_uri):
        raise DataError(f"{cache_uri}: no sticker cache here (index.json missing); build it first")
    index = json.loads(store.read_text(index_uri))
    images = np.load(store.fetch(store.join(cache_uri, "stickers.npy")), mmap_mode="r",
                     allow_pickle=False)
    sets = {int(k): [int(x) for x in v] for k, v in index["sets"].items()}
    offsets = {int(k): int(v) for k, v in index["offsets"].items()}
    return StickerCache(images, sets, offsets)


def gather(cache: StickerCache, rows: Sequence[int]) -> np.ndarray:
    """``[len(rows), S, S, 3] uint8`` copy of the given rows."""
    return np.asarray(cache.images[np.asarray(rows, dtype=np.int64)])
