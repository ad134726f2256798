"""A compact cache of decoded sticker images, built once per data set and image size.

The reference code loads every candidate sticker from its own ``.npy`` file at every step
(30 images per dialog). Instead, every sticker of every set the dialogs use is decoded once,
resized to the model's image size and stored as one ``uint8`` array ``[N, S, S, 3]`` plus an
index; training and evaluation then read rows of a memory-mapped array.

Layout under the cache URI::

    stickers.npy   uint8 [N, S, S, 3]; row 0 is the gray (127) padding image
    index.json     {"image_size": S, "source": ..., "sets": {"<set_id>": [sticker ids]},
                    "offsets": {"<set_id>": first row of the set}, "skipped": {...},
                    "extras": [[set_id, sticker_id, row], ...], "extras_missing": [...]}

``extras`` are answers that exist as ``.npy`` files but are missing from their set's
``emoji_mapping.txt``: the authors' protocol (``eval.protocol=paper``) keeps their dialogs.

``index.json`` is written last, so a cache with an index is complete; an interrupted build is
simply redone.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from srs_core import store
from srs_core.data.candidates import build_candidates
from srs_core.data.images import GRAY
from srs_core.data.report import Report
from srs_core.data.sticker_sets import load_sticker, read_sticker_set
from srs_core.errors import DataError

log = logging.getLogger(__name__)

PAD_ROW = 0
FORMAT_VERSION = 2
PROTOCOLS = ("strict", "paper")


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
    extras: dict[tuple[int, int], int] = field(default_factory=dict)  # (set, sticker) -> row

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

    def candidate_rows(
        self, set_id: int, sticker_id: int, n: int = 10, protocol: str = "strict"
    ) -> list[int]:
        """Rows of the candidates (positive first; PAD_ROW where the set is too small).

        ``strict``: :func:`build_candidates`. ``paper`` (the authors' code): the positive, then
        the first ``n - 1`` stickers of the set's mapping *including the positive* when it is
        among them; an answer missing from the mapping is kept when its image was cached.
        """
        if set_id not in self.sets:
            raise DataError(f"sticker set {set_id} is not in the sticker cache")
        start = self.offsets[set_id]
        positions: dict[int, int] = {}
        for i, sid in enumerate(self.sets[set_id]):
            positions.setdefault(sid, i)  # the authors read the mapping into a dict
        if protocol == "strict":
            ids = build_candidates(sticker_id, self.sets[set_id], n)
            return [PAD_ROW if sid is None else start + positions[sid] for sid in ids]
        if protocol != "paper":
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}")
        if sticker_id in positions:
            positive = start + positions[sticker_id]
        elif (set_id, sticker_id) in self.extras:
            positive = self.extras[(set_id, sticker_id)]
        else:
            raise DataError(f"sticker {sticker_id} is not in set {set_id} and has no image")
        negatives = [start + i for i in positions.values()][: n - 1]
        return [positive, *negatives, *[PAD_ROW] * (n - 1 - len(negatives))]


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


def _cache_is_current(
    cache_uri: str, root: str, image_size: int, wanted: list[int], answers: set[tuple[int, int]]
) -> bool:
    index_uri = store.join(cache_uri, "index.json")
    if not store.exists(index_uri):
        return False
    index = json.loads(store.read_text(index_uri))
    if index.get("version") != FORMAT_VERSION:
        return False
    known = {int(s) for s in index["sets"]} | {int(s) for s in index.get("skipped", {})}
    orders = {int(k): set(v) for k, v in index["sets"].items()}
    extras = {(int(a), int(b)) for a, b, *_ in index["extras"] + index["extras_missing"]}
    unresolved = {
        (a, b) for a, b in answers if a in orders and b not in orders[a] and (a, b) not in extras
    }
    return (
        index.get("image_size") == image_size
        and index.get("source") == root
        and set(wanted) <= known
        and not unresolved
    )


def _decode_extras(
    root: str, answers: Iterable[tuple[int, int]], orders: dict[int, list[int]], report: Report
) -> tuple[list[tuple[int, int, np.ndarray]], list[tuple[int, int]]]:
    """Images of answers missing from their (usable) set's mapping; unreadable ones listed."""
    found, missing = [], []
    members = {set_id: set(order) for set_id, order in orders.items()}
    for set_id, sticker_id in sorted(set(answers)):
        if set_id not in members or sticker_id in members[set_id]:
            continue
        try:
            found.append((set_id, sticker_id, load_sticker(root, set_id, sticker_id)))
        except DataError as exc:
            # Not a skip here: the dialog is counted when its split is read.
            report.add("answer_image_missing", f"npy_stickers/{set_id}", str(exc), skipped=False)
            missing.append((set_id, sticker_id))
    return found, missing


def _read_orders(root: str, wanted: list[int], report: Report,
                 skipped: dict[str, str]) -> dict[int, list[int]]:
    """Each readable set's sticker order; unreadable sets go to ``skipped`` with the reason."""
    orders: dict[int, list[int]] = {}
    for set_id in wanted:
        try:
            orders[set_id] = read_sticker_set(root, set_id)
        except DataError as exc:
            report.add("unknown_set", f"npy_stickers/{set_id}", str(exc))
            skipped[str(set_id)] = str(exc)
    return orders


def _decode_sets(root: str, orders: dict[int, list[int]], offsets: dict[int, int],
                 images: np.ndarray, workers: int, report: Report,
                 skipped: dict[str, str]) -> None:
    """Decode every set into its rows of ``images`` in parallel; a set with a broken sticker
    is dropped from ``orders``/``offsets`` and recorded in ``skipped``."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = {
            set_id: pool.submit(
                _decode_set, root, set_id, order,
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


def _reserved_images(path: Path, rows: int, image_size: int) -> np.memmap:
    """A ``[rows, S, S, 3]`` uint8 memory map at ``path`` whose disk blocks are reserved now: a
    page of a memory map written on a full disk faults (SIGBUS) instead of failing cleanly."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                       shape=(rows, image_size, image_size, 3))
    store.reserve(path)
    return images


def build_sticker_cache(
    stickerchat_root: str,
    set_ids: Iterable[int],
    cache_uri: str,
    image_size: int,
    report: Report | None = None,
    workers: int = 8,
    answers: Iterable[tuple[int, int]] = (),
) -> StickerCache:
    """Decode every sticker of ``set_ids`` into ``cache_uri`` unless a matching cache is there.

    Sets that cannot be read (missing mapping, a broken sticker) are skipped and counted in
    ``report``; their dialogs are skipped later. ``answers`` are the dialogs' (set, sticker)
    pairs: those missing from their set's mapping are decoded too (rows after the sets) for
    the authors' protocol. Memory stays bounded: images are decoded straight into a
    memory-mapped file.
    """
    wanted = sorted(set(set_ids))
    answers = set(answers)
    if _cache_is_current(cache_uri, stickerchat_root, image_size, wanted, answers):
        log.info("reusing sticker cache %s", cache_uri)
        return load_sticker_cache(cache_uri)
    report = report if report is not None else Report()
    skipped: dict[str, str] = {}
    orders = _read_orders(stickerchat_root, wanted, report, skipped)
    if len(orders) == 0:
        raise DataError(f"no usable sticker set under {stickerchat_root}/npy_stickers")
    starts = np.cumsum([1] + [len(order) for order in orders.values()]).tolist()
    offsets = dict(zip(orders, starts[:-1], strict=True))  # row 0 is the gray padding
    row = starts[-1]
    extra_images, extras_missing = _decode_extras(stickerchat_root, answers, orders, report)
    extras = [[set_id, sticker_id, row + i]
              for i, (set_id, sticker_id, _) in enumerate(extra_images)]
    row += len(extras)
    with tempfile.TemporaryDirectory(dir=store.cache_root()) as tmp:
        local = Path(tmp) / "stickers.npy"
        images = _reserved_images(local, row, image_size)
        images[PAD_ROW] = GRAY
        for (*_, extra_row), (*_, image) in zip(extras, extra_images, strict=True):
            images[extra_row] = resize_square(image, image_size)
        _decode_sets(stickerchat_root, orders, offsets, images, workers, report, skipped)
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
        "extras": [e for e in extras if e[0] in orders],
        "extras_missing": [list(pair) for pair in extras_missing],
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
    extras = {(int(a), int(b)): int(r) for a, b, r in index.get("extras", [])}
    return StickerCache(images, sets, offsets, extras)


def gather(cache: StickerCache, rows: Sequence[int]) -> np.ndarray:
    """``[len(rows), S, S, 3] uint8`` copy of the given rows."""
    return np.asarray(cache.images[np.asarray(rows, dtype=np.int64)])
