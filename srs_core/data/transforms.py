"""Image transforms of stickers: ``[3, H, W] uint8 -> [3, S, S] float32``, ImageNet-normalised.

:data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` are the one normalisation of every image model here:
the selector's ViT and the emotion teacher (which scores the selector's own batches) must agree.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The augmentations' parameters, shared with the batched device path (srs_core.data.augment).
CROP_RATIO = (3 / 4, 4 / 3)
TRAIN_CROP_SCALE = (0.75, 1.0)
SIMCLR_CROP_SCALE = (0.08, 1.0)
JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
JITTER_P, GRAYSCALE_P, BLUR_P, FLIP_P = 0.8, 0.2, 0.5, 0.5
BLUR_SIGMA = (0.1, 2.0)


def blur_kernel(size: int) -> int:
    """SimCLR's Gaussian blur kernel at image size ``size`` (about a tenth of it, odd)."""
    return max(3, (size // 10) | 1)


def normalise() -> list:
    """uint8 -> float32 in [0, 1] -> ImageNet mean/std (the tail of every transform)."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(size: int) -> v2.Compose:
    """The selector's training crop (scale 0.75-1, bicubic), then normalisation."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=TRAIN_CROP_SCALE, ratio=CROP_RATIO,
                             interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        *normalise(),
    ])


def eval_transform() -> v2.Compose:
    """Normalisation only: cached stickers are already square at the model's size."""
    return v2.Compose(normalise())


def simclr_transform(size: int) -> v2.Compose:
    """SimCLR's augmentation (crop, colour jitter, grayscale, blur, flip) of one view."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=SIMCLR_CROP_SCALE, ratio=CROP_RATIO, antialias=True),
        v2.RandomApply([v2.ColorJitter(*JITTER)], p=JITTER_P),
        v2.RandomGrayscale(p=GRAYSCALE_P),
        v2.RandomApply([v2.GaussianBlur(blur_kernel(size), sigma=BLUR_SIGMA)], p=BLUR_P),
        v2.RandomHorizontalFlip(p=FLIP_P),
        *normalise(),
    ])
