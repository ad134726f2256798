"""Augmentations on the training device (srs_core.data.augment) against the loader path.

The two paths draw from different generators, so they are compared as distributions: the
same statistics over a few thousand augmented stickers must agree within what the sample
size allows, and each statistic is shown to catch a device path that drops a step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from srs_core.config import load_config
from srs_core.data.augment import CROP, VIEW, augment_batch, augment_on_device, simclr_view
from srs_core.data.dataset import SrsDataset, make_collate
from srs_core.data.examples import Example
from srs_core.data.sticker_cache import StickerCache
from srs_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SIZE, CANDIDATES, DIALOGS = 32, 10, 48
GRAY_ON, BLUR_ON = CROP + 14, CROP + 15  # columns of view 1's switches (view 2: + VIEW)


def _sticker(index: int) -> np.ndarray:
    """``[S, S, 3] uint8``: a colour ramp brightening to the right (so a mirror shows) with a
    one-pixel checker texture (so blur and zoom show)."""
    rng = np.random.default_rng(index)
    colour = rng.uniform(0.3, 1.0, 3)
    colour[index % 3] = 1.0  # saturated: a grayscale image is unmistakable
    colour[(index + 1) % 3] *= 0.2
    ramp = np.linspace(0.25, 1.0, SIZE)[None, :]
    checker = 1 - 0.25 * ((np.arange(SIZE)[:, None] + np.arange(SIZE)[None, :]) % 2)
    return np.round(255 * (ramp * checker)[..., None] * colour).astype(np.uint8)


@pytest.fixture(scope="module")
def dialogs() -> tuple[StickerCache, list[Example]]:
    images = np.stack([_sticker(i) for i in range(40)])
    cache = StickerCache(images=images, sets={0: list(range(40))}, offsets={0: 0})
    examples = [Example(line=i, utterances=("hi",), set_id=0, sticker_id=0,
                        rows=tuple((3 * i + j) % 40 for j in range(CANDIDATES)),
                        polarity=(0.0, 0.0)) for i in range(DIALOGS)]
    return cache, examples


def _tokenize(contexts):
    ids = torch.ones(len(contexts), 4, dtype=torch.long)
    return ids, torch.ones_like(ids)


def _device_batch(dataset: SrsDataset, indices, **kwargs) -> dict:
    return augment_batch(make_collate(_tokenize)([dataset[i] for i in indices]), **kwargs)


def _pixels(normalised: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``[..., 3, S, S]`` -> 0-255 floats ``[N, 3, S, S]``."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (normalised * std + mean).mul(255).reshape(-1, 3, SIZE, SIZE)


def _statistics(normalised: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image statistics ``[N]`` of augmented stickers."""
    x = _pixels(normalised)
    value = x.amax(1)  # HSV value: kept by hue and saturation, ordered by the ramp
    stats = {f"mean_{c}": x[:, i].mean((1, 2)) / 255 for i, c in enumerate("rgb")}
    stats.update({f"std_{c}": x[:, i].std((1, 2)) / 255 for i, c in enumerate("rgb")})
    # Spread of the images' brightness around a fixed level: what colour jitter widens.
    stats["brightness_spread"] = (value.mean((1, 2)) / 255 - 0.5) ** 2
    stats["gray"] = ((x.amax(1) - x.amin(1)).amax((1, 2)) < 1.5).float()
    stats["flipped"] = (value[..., : SIZE // 2].mean((1, 2))
                        > value[..., SIZE // 2:].mean((1, 2))).float()
    # High-frequency energy: what blur and zooming in take away.
    stats["detail"] = (value[..., 1:] - value[..., :-1]).abs().mean((1, 2)) / 255
    return stats


def _mismatches(loader: torch.Tensor, device: torch.Tensor, z: float = 5.0) -> list[str]:
    """Statistics whose means differ by more than ``z`` standard errors of the difference.

    With ~1000 images per side, z = 5 leaves a chance of about 6e-7 per statistic for a
    false alarm (the draws are seeded, so a pass stays a pass); a real change of the
    distribution, such as a dropped step, sits tens of standard errors away.
    """
    a, b = _statistics(loader), _statistics(device)
    wrong = []
    for name in a:
        error = (a[name].var() / len(a[name]) + b[name].var() / len(b[name])).sqrt()
        gap = (a[name].mean() - b[name].mean()).abs()
        if gap > z * error + 1e-6:
            wrong.append(f"{name}: loader {a[name].mean():.4f} device {b[name].mean():.4f} "
                         f"({gap / max(error, 1e-12):.1f} standard errors)")
    return wrong


@pytest.fixture(scope="module")
def both_paths(dialogs) -> tuple[dict, dict]:
    """Train crops and SimCLR views of every dialog by the loader path and the device path."""
    cache, examples = dialogs
    loader = SrsDataset(examples, cache, train=True, simclr=True, seed=1)
    items = [loader[i] for i in range(DIALOGS)]
    on_device = SrsDataset(examples, cache, train=True, simclr=True, seed=2, on_device=True)
    raw = make_collate(_tokenize)([on_device[i] for i in range(DIALOGS)])
    return ({"images": torch.stack([item["images"] for item in items]),
             "views": torch.stack([item["views"] for item in items], dim=1)}, raw)


def test_device_path_has_the_loader_paths_distribution(both_paths) -> None:
    loader, raw = both_paths
    device = augment_batch(raw)
    assert device["images"].shape == loader["images"].shape == (DIALOGS, CANDIDATES, 3, SIZE,
                                                                SIZE)
    assert device["views"].shape == loader["views"].shape
    assert device["images"].dtype == torch.float32 and "augment" not in device
    assert not _mismatches(loader["images"], device["images"])
    assert not _mismatches(loader["views"], device["views"])
    views = _statistics(device["views"])
    assert 0.15 < views["gray"].mean() < 0.25 and 0.42 < views["flipped"].mean() < 0.58
    assert _statistics(device["images"])["flipped"].sum() == 0  # the train crop never mirrors


@pytest.mark.parametrize(("dropped", "column", "statistic"), [
    ("blur", BLUR_ON, "detail"), ("grayscale", GRAY_ON, "gray"), ("flip", CROP + 4, "flipped"),
    ("colour jitter", CROP + 5, "brightness_spread"),
])
def test_the_comparison_catches_a_dropped_step(both_paths, dropped, column, statistic) -> None:
    loader, raw = both_paths
    broken = dict(raw, augment=raw["augment"].clone())
    broken["augment"][..., [column, column + VIEW]] = 0  # the step never applies
    found = _mismatches(loader["views"], augment_batch(broken)["views"])
    assert any(line.startswith(f"{statistic}:") for line in found), (dropped, found)


def test_device_draws_depend_only_on_seed_epoch_and_dialog(dialogs) -> None:
    cache, examples = dialogs
    dataset = SrsDataset(examples, cache, train=True, simclr=True, seed=7, on_device=True)
    first = _device_batch(dataset, [3, 4, 5])
    again = _device_batch(SrsDataset(examples, cache, train=True, simclr=True, seed=7,
                                     on_device=True), [5, 9, 3])  # another batch, other order
    assert torch.equal(first["images"][0], again["images"][2])
    assert torch.equal(first["views"][:, 2], again["views"][:, 0])
    dataset.set_epoch(1)
    later = _device_batch(dataset, [3])
    assert not torch.equal(later["images"][0], first["images"][0])  # a new epoch, new crops
    assert not torch.equal(later["views"][:, 0], first["views"][:, 0])

    def loaded(workers: int) -> dict:
        part = torch.utils.data.Subset(dataset, range(12))
        loader = torch.utils.data.DataLoader(part, batch_size=4, num_workers=workers,
                                             collate_fn=make_collate(_tokenize))
        batches = [augment_batch(batch) for batch in loader]
        return {key: torch.cat([b[key] for b in batches], dim=1 if key == "views" else 0)
                for key in ("images", "views")}

    alone, workers = loaded(0), loaded(2)
    assert torch.equal(alone["images"], workers["images"])
    assert torch.equal(alone["views"], workers["views"])


def test_the_result_does_not_depend_on_chunking(both_paths) -> None:
    _, raw = both_paths
    small = {k: v[:8] for k, v in raw.items() if isinstance(v, torch.Tensor)}
    whole, pieces = augment_batch(small, chunk=80), augment_batch(small, chunk=7)
    assert torch.equal(pieces["views"], whole["views"])
    assert torch.equal(pieces["images"], whole["images"])
    views = small["augment"].reshape(80, -1)[:, CROP:CROP + VIEW]
    alone = simclr_view(small["images"].reshape(80, 3, SIZE, SIZE)[5:6], views[5:6], views[5:6])
    assert torch.equal(alone[0], whole["views"][0].reshape(80, 3, SIZE, SIZE)[5])


def test_the_switch_keeps_cpu_runs_on_the_loader_path() -> None:
    assert not augment_on_device("auto", torch.device("cpu"))
    assert augment_on_device("auto", torch.device("cuda", 0))
    assert augment_on_device("device", torch.device("cpu"))
    assert not augment_on_device("loader", torch.device("cuda"))
    assert load_config(preset="tiny").train.augment == "auto"


def _losses(output: Path) -> dict[int, float]:
    history = [json.loads(line) for line in (output / "history.jsonl").open()]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.mark.slow
def test_a_device_augmented_run_resumes_exactly_mid_epoch(tmp_path, monkeypatch) -> None:
    """As tests/test_train.py's kill-and-resume test, in one process: the checkpoint a run
    leaves at step 6 of 12 is resumed and must retrace the uninterrupted run bit for bit."""
    from srs_core.data.synth import synthesize
    from srs_core.runtime.checkpoint import CheckpointManager
    from srs_core.train import loop

    synthesize(tmp_path / "demo", seed=11, dialogs=48, sets=10, images=70)
    calls, save = [], loop.SelectorTrainer.save

    def save_and_keep(trainer) -> None:
        save(trainer)
        if trainer.state.step == 6 and trainer.state.epoch == 0:
            shutil.copytree(Path(trainer.outputs.checkpoints), tmp_path / "at-step-6")

    def counted(batch, plan=None):
        calls.append("augment" in batch)
        return augment_batch(batch, plan)

    monkeypatch.setattr(loop.SelectorTrainer, "save", save_and_keep)
    monkeypatch.setattr(loop, "augment_batch", counted)

    def run(output: Path) -> None:
        loop.train(load_config(preset="tiny", overrides=[
            f"data.stickerchat={tmp_path / 'demo' / 'stickerchat'}", f"train.output={output}",
            "train.batch_size=4", "train.log_every=1", "eval.batch_size=8", "train.epochs=1",
            "train.checkpoint_every=3", "loss.emotion=false", "train.augment=device"]))

    run(tmp_path / "reference")
    assert calls and all(calls)  # every batch came as uint8 and was augmented here
    shutil.copytree(tmp_path / "at-step-6", tmp_path / "resumed" / "checkpoints")
    run(tmp_path / "resumed")
    expected = _losses(tmp_path / "reference")
    assert sorted(expected) == list(range(1, 13))
    assert _losses(tmp_path / "resumed") == {s: v for s, v in expected.items() if s > 6}
    resumed = CheckpointManager(str(tmp_path / "resumed" / "checkpoints")).latest()[1]["model"]
    reference = CheckpointManager(str(tmp_path / "reference" / "checkpoints")).latest()[1]["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_crops_match_torchvision_on_the_same_boxes(mode: str) -> None:
    """Given the same boxes, the batched crops are torchvision's resized_crop of each uint8
    image but for rounding: at most 2 levels apart (bilinear: one pass instead of two)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from srs_core.data.augment import draw_parameters
    from srs_core.data.crops import bicubic_crops, bilinear_crops

    torch.manual_seed(0)
    n, size = 32, 128
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 16, 16) * 255, size=(size, size),
                                             mode="bilinear")
    raw = smooth.round().to(torch.uint8)
    draws = np.concatenate([draw_parameters(0, 0, i, 10, size, True) for i in range(4)])[:n]
    boxes = torch.from_numpy(draws[:, 4:8] if mode == "bilinear" else draws[:, :4])
    interpolation = getattr(InterpolationMode, mode.upper())
    expected = torch.stack([
        TF.resized_crop(raw[i], *[int(v) for v in boxes[i]], [size, size],
                        interpolation=interpolation, antialias=True) for i in range(n)])
    if mode == "bilinear":
        ours = bilinear_crops(raw, boxes, torch.zeros(n))
    else:
        ours = bicubic_crops(raw, boxes)
    difference = (ours - expected.float()).abs()
    assert difference.max() <= 2
    assert (difference > 0).float().mean() < 0.25


def _colour_images(n: int, size: int = 64) -> torch.Tensor:
    """``[n, 3, S, S] uint8``: smooth colour fields with some gray and saturated pixels."""
    torch.manual_seed(1)
    fields = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8) * 255, size=(size, size),
                                             mode="bicubic").clamp(0, 255)
    fields[:, :, :4] = fields[:, :1, :4]  # gray rows: hue and saturation are undefined there
    return fields.round().to(torch.uint8)


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue", "blur"])
def test_each_step_matches_torchvision_given_the_same_draw(op: str) -> None:
    """Each step of a view, given one image's factor (or blur sigma), is torchvision's uint8
    result but for float rounding: at most one level apart, on under 1% of the pixels."""
    from torchvision.transforms.v2 import functional as TF

    from srs_core.data import augment
    from srs_core.data.transforms import blur_kernel

    n = 24
    raw = _colour_images(n)
    if op == "hue":
        factors = torch.linspace(-0.1, 0.1, n)
    elif op == "blur":
        factors = torch.linspace(0.1, 2.0, n)
    else:
        factors = torch.linspace(0.6, 1.4, n)
    if op == "blur":
        kernel = blur_kernel(raw.shape[-1])
        ours = augment._blur(raw.float(), factors, kernel)
        expected = [TF.gaussian_blur(raw[i], [kernel, kernel], [float(factors[i])] * 2)
                    for i in range(n)]
    else:
        ours = raw.float()
        getattr(augment, f"_{op}_")(ours, factors.view(-1, 1, 1, 1))
        adjust = getattr(TF, f"adjust_{op}")
        expected = [adjust(raw[i], float(factors[i])) for i in range(n)]
    difference = (ours - torch.stack(expected).float()).abs()
    assert difference.max() <= 1
    assert (difference > 0).float().mean() < 0.01


def test_cpu_crops_are_torchvisions_and_the_batched_ones_are_close() -> None:
    """On a CPU above 64 px the train crop (bicubic) and the view crops (bilinear, flipped or
    not) are torchvision's uint8 crops per image, the loader path's pixels; the batched
    versions (accelerators, small images) stay within 2 levels of them."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from srs_core.data.augment import draw_parameters, train_crop
    from srs_core.data.crops import bicubic_crops, bilinear_crops, crop_each

    def torchvision_crop(image, row, mode: str) -> torch.Tensor:
        size = image.shape[-1]
        crop = TF.resized_crop(image, *[int(v) for v in row[:4]], [size, size],
                               interpolation=getattr(InterpolationMode, mode), antialias=True)
        return TF.horizontal_flip(crop) if len(row) > 4 and row[4] > 0 else crop

    for size in (96, 48):
        raw = _colour_images(12, size=size)
        draws = torch.from_numpy(np.concatenate([draw_parameters(0, 0, i, 6, size, True)
                                                 for i in range(2)]))
        boxes, view = draws[:, :4], draws[:, 4:9]
        assert 0 < (view[:, 4] > 0).sum() < len(view)  # some views flipped, some not
        ours = train_crop(raw, boxes, boxes)
        expected = torch.stack([torchvision_crop(raw[i], boxes[i], "BICUBIC")
                                for i in range(len(raw))]).float()
        batched = bicubic_crops(raw, boxes)
        assert ours.dtype == torch.float32 and (batched - expected).abs().max() <= 2
        assert torch.equal(ours, expected if size > 64 else batched)
        expected = torch.stack([torchvision_crop(raw[i], view[i], "BILINEAR")
                                for i in range(len(raw))]).float()
        assert torch.equal(crop_each(raw, view, "bilinear"), expected)
        assert (bilinear_crops(raw, view[:, :4], view[:, 4]) - expected).abs().max() <= 2


def test_per_image_and_batched_crops_make_the_same_augmentations(monkeypatch) -> None:
    """The whole batch at 96 px on a CPU (crops per image) against the same draws with the
    crops batched: the same train images and views but for the crops' rounding, which the
    colour steps may carry a level or two further."""
    from srs_core.data import crops
    from srs_core.data.augment import draw_parameters

    n, size = 12, 96
    raw = _colour_images(n, size=size)
    draws = np.concatenate([draw_parameters(0, 0, i, 6, size, True) for i in range(2)])
    batch = {"images": raw.view(2, 6, 3, size, size),
             "augment": torch.from_numpy(draws).view(2, 6, -1)}
    per_image = augment_batch(batch)
    monkeypatch.setattr(crops, "CPU_BATCHED_CROP_UP_TO", size)
    batched = augment_batch(batch)
    for key in ("images", "views"):
        difference = (_pixels(per_image[key]) - _pixels(batched[key])).abs()
        assert torch.quantile(difference.flatten(), 0.99) <= 2, key
        assert difference.mean() < 0.3, key
