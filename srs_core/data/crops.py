"""Crops resized to the full sticker size, as torchvision's ``RandomResizedCrop`` makes them.

The device augmentations (:mod:`srs_core.data.augment`) crop either per image on the uint8
pixels, with the very kernels torchvision calls on the loader path, or batched (one
resampling for the whole batch: accelerators, and small images on a CPU), which agrees with
torchvision but for rounding (tests/test_augment.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CPU_BATCHED_CROP_UP_TO = 64  # image side up to which a CPU crops batched


def crops_per_image(images: torch.Tensor) -> bool:
    """Whether uint8 ``images`` are cropped one by one with the kernels torchvision calls on
    the loader path (its exact pixels): on a CPU above ``CPU_BATCHED_CROP_UP_TO`` px, where
    that is faster (ms per image, 128 px: train crop 0.16 vs 0.72 batched, view 0.14 vs 0.15;
    32 px: 0.041 vs 0.040, 0.044 vs 0.022)."""
    return (images.dtype == torch.uint8 and images.device.type == "cpu"
            and images.shape[-1] > CPU_BATCHED_CROP_UP_TO)


def crop_each(images: torch.Tensor, plan: torch.Tensor, mode: str) -> torch.Tensor:
    """Each uint8 image's box (``plan`` rows: top, left, height, width[, flip]) resized to
    the full size with antialiased ``mode`` interpolation, float on the 0-255 grid."""
    size = images.shape[-1]
    out = torch.empty(images.shape, dtype=torch.float32)
    for i, (top, left, height, width, *flip) in enumerate(plan.long().tolist()):
        crop = F.interpolate(images[i:i + 1, :, top:top + height, left:left + width],
                             size=(size, size), mode=mode, antialias=True)[0]
        out[i] = crop.flip(-1) if flip and flip[0] else crop
    return out


def bicubic_crops(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Each image's box (top, left, height, width) resized to the full size, float32 on the
    0-255 grid: torchvision's antialiased bicubic crop-then-resize of uint8 images."""
    size = images.shape[-1]
    top, left, height, width = boxes.unbind(1)
    # Columns first, then rows, back on the grid after each (torchvision's native uint8
    # resize). Each pass is a batched product with a per-image [S, S] resampling matrix:
    # dense, but one BLAS call beats gathering a few taps per output pixel.
    columns = _resampling_matrix(*_filter_taps(left, width, size), size)
    rows = _resampling_matrix(*_filter_taps(top, height, size), size)
    n, channels = images.shape[:2]
    columns = columns.transpose(1, 2).contiguous()
    x = torch.bmm(images.float().reshape(n, channels * size, size), columns)
    x = x.round_().clamp_(0, 255).view(n * channels, size, size)
    x = torch.bmm(rows.repeat_interleave(channels, dim=0), x)
    return x.round_().clamp_(0, 255).view(n, channels, size, size)


def bilinear_crops(images: torch.Tensor, boxes: torch.Tensor,
                   flip: torch.Tensor) -> torch.Tensor:
    """Each image's box resized to the full size (``flip``: mirrored) in one bilinear
    ``grid_sample`` pass (about 5x faster on a CPU than two resampling products): an upscale's
    sample points, clamped to the box as torchvision's are, so only the rounding between
    torchvision's two passes differs."""
    size = images.shape[-1]
    top, left, height, width = boxes.unbind(1)
    outputs = torch.arange(size, device=images.device, dtype=torch.float32).view(1, size)

    def sample_points(start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        length = length.view(-1, 1)
        source = ((outputs + 0.5) * length / size - 0.5).clamp_(min=0)
        source = torch.minimum(source, length - 1) + start.view(-1, 1)
        return (2 * source + 1) / size - 1  # grid_sample's [-1, 1], align_corners=False

    x = sample_points(left, width)  # [N, S]
    x = torch.where(flip.view(-1, 1) > 0, x.flip(1), x)
    y = sample_points(top, height)
    grid = torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), dim=-1)
    out = F.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255)


def _resampling_matrix(index: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, S(out), S(in)]``: each output pixel's taps (``index, weights [N, S, T]``) as a row;
    taps that land on the same input pixel add up."""
    matrix = torch.zeros(len(index), size, size, device=weights.device, dtype=weights.dtype)
    return matrix.scatter_add_(2, index, weights)


def _filter_taps(start: torch.Tensor, length: torch.Tensor,
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``index, weights [N, S, 4]``: the input pixels and weights of each output pixel when
    ``[start, start+length)`` is resized to ``size`` (an upscale) with torchvision's
    antialiased bicubic filter: a tap outside the box is dropped and the rest renormalised."""
    outputs = torch.arange(size, device=start.device, dtype=torch.float32).view(1, size)
    length = length.view(-1, 1, 1)
    source = ((outputs + 0.5) * length[..., 0] / size - 0.5).unsqueeze(-1)  # [N, S, 1]
    taps = source.floor() + torch.arange(-1, 3, device=start.device)
    distance = (taps - source).abs_()
    near = ((1.5 * distance - 2.5) * distance) * distance + 1  # a = -0.5 (the AA kernel's)
    far = ((distance - 5) * distance + 8) * distance * -0.5 + 2
    weights = torch.where(distance < 1, near, torch.where(distance < 2, far, 0))
    weights = weights * ((taps >= 0) & (taps < length))
    weights = weights / weights.sum(-1, keepdim=True)
    index = (taps.clamp(min=0) + start.view(-1, 1, 1)).clamp_(max=size - 1).long()
    return index, weights
