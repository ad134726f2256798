"""SER30K images for the teacher: usable items, transforms and a torch Dataset.

Images are read from a local directory: an ``s3://`` root is fetched once into the local cache
(:func:`local_root`), because training reads every image every epoch. Items whose image is
missing or cannot be decoded are found once, up front (:func:`usable_items`), and counted as
skips, so no data-loader worker ever fails in the middle of an epoch.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.transforms import v2

from srs_core import store
from srs_core.data.report import DataProblem, Report
from srs_core.data.ser30k import EMOTIONS, Ser30kItem, load_image, read_annotations
from srs_core.data.sticker_cache import resize_square
from srs_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from srs_core.errors import DataError

log = logging.getLogger(__name__)

# Stickers are one centred character: crops much below half the image lose the face that
# carries the emotion, so the crop scale starts at 0.5 (ImageNet's 0.08 is for scenes).
CROP_SCALE = (0.5, 1.0)


def local_root(ser30k_uri: str) -> str:
    """A local directory with the SER30K tree (the root itself, or a cached download)."""
    if store.local_path(ser30k_uri) is not None:
        return ser30k_uri
    return str(store.fetch_tree(ser30k_uri))


def _normalise() -> list:
    return [v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(size: int) -> v2.Compose:
    """RandomResizedCrop, horizontal flip, ImageNet normalisation: ``[3,H,W] uint8 -> [3,S,S]``."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True),
        v2.RandomHorizontalFlip(),
        *_normalise(),
    ])


def eval_transform(size: int) -> v2.Compose:
    """ImageNet normalisation only; resizing to a square happens before (as in the SRS cache)."""
    return v2.Compose(_normalise())


class Ser30kImages(torch.utils.data.Dataset):
    """``(image [3, S, S] float32, label)`` for SER30K items under a local root."""

    def __init__(self, root: str, items: Sequence[Ser30kItem], size: int, train: bool) -> None:
        self.root, self.items, self.size, self.train = root, list(items), size, train
        self.transform = train_transform(size) if train else eval_transform(size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        pixels = load_image(self.root, item)  # [H, W, 3] uint8
        if not self.train:
            # the same bicubic square resize the SRS sticker cache applies to candidates
            pixels = resize_square(pixels, self.size)
        image = torch.from_numpy(np.require(pixels, requirements="CW")).permute(2, 0, 1)
        return self.transform(image), item.label


def _check(root: str, item: Ser30kItem) -> DataProblem | None:
    try:
        load_image(root, item)
    except DataProblem as problem:
        return problem
    return None


def usable_items(
    root: str, items: Sequence[Ser30kItem], report: Report, workers: int = 0
) -> list[Ser30kItem]:
    """Items whose image decodes; the others are counted in ``report`` (raise if strict)."""
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        problems = list(pool.map(lambda item: _check(root, item), items, chunksize=32))
    usable = []
    for item, problem in zip(items, problems, strict=True):
        if problem is None:
            usable.append(item)
        else:
            report.add_error(problem)
    return usable


def load_split(
    ser30k_uri: str, root: str, split: str, report: Report
) -> list[Ser30kItem]:
    """Annotations (read from ``ser30k_uri``) of a split, unusable images dropped and counted.

    ``root`` is the local copy from :func:`local_root` that the images are read from.
    """
    items = read_annotations(ser30k_uri, split, report=report)
    usable = usable_items(root, items, report)
    if len(usable) < len(items):
        log.warning("SER30K %s: %d of %d images unusable (counted as skips)", split,
                    len(items) - len(usable), len(items))
    return usable


def class_counts(items: Sequence[Ser30kItem]) -> list[int]:
    """Items per class in ``EMOTIONS`` order."""
    counts = Counter(item.label for item in items)
    return [counts.get(c, 0) for c in range(len(EMOTIONS))]


def require_every_class(items: Sequence[Ser30kItem], where: str) -> None:
    """DataError naming the classes without a single usable image."""
    counts = class_counts(items)
    empty = [EMOTIONS[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        per_class = ", ".join(f"{name}={n}" for name, n in zip(EMOTIONS, counts, strict=True))
        raise DataError(
            f"{where}: no usable images of class(es) {', '.join(empty)} ({per_class}); every "
            "emotion needs training images: add them or fix the annotations' 'anno' values"
        )
