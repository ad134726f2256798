"""Sticker cache and the training data path: candidates -> rows -> augmented tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from srs_core import store
from srs_core.data.dataset import ResumableSampler, SrsDataset, make_collate
from srs_core.data.examples import load_examples
from srs_core.data.report import Report
from srs_core.data.sticker_cache import PAD_ROW, build_sticker_cache, load_sticker_cache
from srs_core.data.sticker_sets import load_sticker, read_sticker_set
from srs_core.data.stickerchat import iter_dialogs
from srs_core.data.synth import synthesize
from srs_core.errors import DataError


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    synthesize(out, seed=3, dialogs=120, sets=12, images=70)
    return out


def _sets(root: str) -> set[int]:
    splits = ("train", "val", "test")
    return {d.sticker_set_id for split in splits for d in iter_dialogs(root, split)}


def test_cache_holds_every_sticker_once(demo: Path, tmp_path: Path) -> None:
    root = str(demo / "stickerchat")
    cache = build_sticker_cache(root, _sets(root), str(tmp_path / "c"), 24)
    assert cache.images.dtype == np.uint8 and cache.images.shape[1:] == (24, 24, 3)
    assert (cache.images[PAD_ROW] == 127).all()
    total = sum(len(order) for order in cache.sets.values())
    assert cache.images.shape[0] == total + 1
    set_id = next(iter(cache.sets))
    first = read_sticker_set(root, set_id)[0]
    original = load_sticker(root, set_id, first)
    row = cache.row(set_id, first)
    # Same picture, resized: the mean colour survives resizing.
    assert np.abs(cache.images[row].mean((0, 1)) - original.mean((0, 1))).max() < 12


def test_candidate_rows_follow_the_protocol(demo: Path, tmp_path: Path) -> None:
    root = str(demo / "stickerchat")
    cache = build_sticker_cache(root, _sets(root), str(tmp_path / "c"), 16)
    for set_id, order in cache.sets.items():
        for sticker in order[:3] + order[-2:]:
            rows = cache.candidate_rows(set_id, sticker)
            assert len(rows) == 10 and rows[0] == cache.row(set_id, sticker)
            real = [r for r in rows if r != PAD_ROW]
            assert len(set(real)) == len(real)  # the positive never appears twice
            assert rows.count(PAD_ROW) == max(0, 10 - len(order))
    with pytest.raises(DataError, match="sticker_not_in_set"):
        cache.candidate_rows(set_id, -5)


def test_cache_is_reused_and_rebuilt_when_stale(demo: Path, tmp_path: Path) -> None:
    root = str(demo / "stickerchat")
    uri = str(tmp_path / "c")
    build_sticker_cache(root, _sets(root), uri, 16)
    stamp = (tmp_path / "c" / "stickers.npy").stat().st_mtime_ns
    build_sticker_cache(root, _sets(root), uri, 16)
    assert (tmp_path / "c" / "stickers.npy").stat().st_mtime_ns == stamp
    assert build_sticker_cache(root, _sets(root), uri, 20).image_size == 20


def test_broken_set_is_skipped_and_counted(demo: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "sc"
    shutil.copytree(demo / "stickerchat", copy)
    sets = sorted(_sets(str(copy)))
    victim = next(iter((copy / "npy_stickers" / str(sets[0])).glob("*.npy")))
    victim.write_bytes(victim.read_bytes()[:40])
    report = Report()
    cache = build_sticker_cache(str(copy), sets, str(tmp_path / "c"), 16, report=report)
    assert not cache.has_set(sets[0]) and report.counts["bad_sticker"] == 1
    examples = load_examples(str(copy), "train", cache, None, report=report)
    assert report.counts["set_not_usable"] >= 1
    assert all(ex.set_id != sets[0] for ex in examples)


def test_cache_on_s3(demo: Path, s3_server: str) -> None:
    root = str(demo / "stickerchat")
    uri = store.join(s3_server, "cache")
    built = build_sticker_cache(root, _sets(root), uri, 16)
    loaded = load_sticker_cache(uri)
    assert np.array_equal(np.asarray(built.images), np.asarray(loaded.images))


def test_dataset_and_collate_shapes(demo: Path, tmp_path: Path) -> None:
    import torch

    root = str(demo / "stickerchat")
    cache = build_sticker_cache(root, _sets(root), str(tmp_path / "c"), 16)
    examples = load_examples(root, "train", cache, {1: (2.0, 1.0)})
    assert examples[0].polarity == (2.0, 1.0) and examples[1].polarity == (0.0, 0.0)
    dataset = SrsDataset(examples, cache, train=True, simclr=True)

    def tokenize(contexts):
        ids = torch.ones(len(contexts), 5, dtype=torch.long)
        return ids, torch.ones_like(ids)

    batch = make_collate(tokenize)([dataset[0], dataset[1], dataset[2]])
    assert batch["images"].shape == (3, 10, 3, 16, 16)
    assert batch["views"].shape == (2, 3, 10, 3, 16, 16)
    assert batch["text_polarity"].shape == (3, 2)
    plain = SrsDataset(examples, cache, train=False, simclr=True)[0]
    assert "views" not in plain
    expected = (cache.images[examples[0].rows[0]] / 255.0 - 0.485) / 0.229
    assert torch.allclose(plain["images"][0, 0], torch.tensor(expected[..., 0]).float(), atol=1e-4)


def test_augmentations_depend_only_on_seed_epoch_and_dialog(demo: Path, tmp_path: Path) -> None:
    """What makes a resumed run see the images an uninterrupted one saw, with any number of
    loader workers and in any read order."""
    import torch

    root = str(demo / "stickerchat")
    cache = build_sticker_cache(root, _sets(root), str(tmp_path / "c"), 16)
    examples = load_examples(root, "train", cache)
    dataset = SrsDataset(examples, cache, train=True, simclr=True, seed=7)
    first = dataset[3]
    dataset[4]  # another read in between changes nothing
    again = SrsDataset(examples, cache, train=True, simclr=True, seed=7)[3]
    assert torch.equal(first["images"], again["images"]) and torch.equal(first["views"],
                                                                        again["views"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3]["images"], first["images"])  # a new epoch, new crops
    state = torch.get_rng_state()
    dataset[3]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone

    def images(workers: int) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers,
                                             collate_fn=lambda items: torch.stack(
                                                 [item["images"] for item in items]))
        return torch.cat(list(loader))

    assert torch.equal(images(0), images(2))


def test_sampler_shards_resume_without_repeats() -> None:
    full = []
    for rank in range(2):
        sampler = ResumableSampler(11, rank, 2, seed=5, shuffle=True)
        sampler.set_epoch(3)
        full.append(list(sampler))
    assert len(full[0]) == len(full[1]) == 6
    assert set(full[0]) | set(full[1]) == set(range(11))
    resumed = ResumableSampler(11, 1, 2, seed=5, shuffle=True)
    resumed.set_epoch(3, skip=4)
    assert list(resumed) == full[1][4:]
    other_epoch = ResumableSampler(11, 1, 2, seed=5, shuffle=True)
    other_epoch.set_epoch(4)
    assert list(other_epoch) != full[1]
