"""The training augmentations run batched on the training device, each image with its own draw.

With ``train.augment=device`` the loader workers only gather each dialog's uint8 candidates
and draw its augmentation parameters (:func:`draw_parameters`, a function of (seed, epoch,
dialog) alone, so resume stays exact); :func:`augment_batch` then makes the train crop and
both SimCLR views of the whole batch on the device. The distributions are those of the loader
path (:mod:`srs_core.data.transforms`, tests/test_augment.py); the draws differ (another
generator), and given the same draws the pixels would agree to within a step or two of 255
(fixed-point and float rounding). Each op is per image, so an image's result does not depend
on the batch around it. Pixels stay on the 0-255 grid after every step, rounded or truncated
as torchvision does on uint8 images, so that no step adds a bias the loader path lacks.

Parameters, one row per candidate image, ``augment float32 [B, C, 4 (+ 2 x 17 with SimCLR)]``::

    0:4     train crop: top, left, height, width (pixels of the S x S sticker)
    4:21    SimCLR view 1: crop (4), flip, jitter on, brightness, contrast, saturation, hue
            factors, jitter order (4 op ids), grayscale on, blur on, blur sigma
    21:38   SimCLR view 2
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from srs_core.data.crops import bicubic_crops, bilinear_crops, crop_each, crops_per_image
from srs_core.data.transforms import (
    BLUR_P,
    BLUR_SIGMA,
    CROP_RATIO,
    FLIP_P,
    GRAYSCALE_P,
    IMAGENET_MEAN,
    IMAGENET_STD,
    JITTER,
    JITTER_P,
    SIMCLR_CROP_SCALE,
    TRAIN_CROP_SCALE,
    blur_kernel,
)

CROP, VIEW = 4, 17  # parameter columns of the train crop and of one SimCLR view
CPU_CHUNK_PIXELS = 16 * 128 * 128  # images a CPU augments at once: a few, kept in its caches
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights


def augment_on_device(mode: str, device: torch.device) -> bool:
    """Whether ``train.augment`` puts the augmentations on ``device`` (auto: on CUDA only)."""
    return mode == "device" or (mode == "auto" and torch.device(device).type == "cuda")


# ------------------------------------------------------------------ in the loader workers


def draw_parameters(seed: int, epoch: int, index: int, candidates: int, size: int,
                    simclr: bool) -> np.ndarray:
    """``float32 [candidates, P]``: every augmentation draw of one dialog (layout above)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))
    columns = [_crop_boxes(rng, candidates, size, TRAIN_CROP_SCALE)]
    if simclr:
        columns += [_view_parameters(rng, candidates, size) for _ in range(2)]
    return np.concatenate(columns, axis=1).astype(np.float32)


def _crop_boxes(rng: np.random.Generator, n: int, size: int,
                scale: tuple[float, float]) -> np.ndarray:
    """``[n, 4]`` (top, left, height, width): RandomResizedCrop's draw, 10 tries then all."""
    target = size * size * rng.uniform(*scale, size=(n, 10))
    aspect = np.exp(rng.uniform(*np.log(CROP_RATIO), size=(n, 10)))
    width, height = np.round(np.sqrt(target * aspect)), np.round(np.sqrt(target / aspect))
    fits = (width >= 1) & (width <= size) & (height >= 1) & (height <= size)
    first = fits.argmax(axis=1)
    rows = np.arange(n)
    # A square sticker's ratio (1) is inside CROP_RATIO: the fallback is the whole image.
    height = np.where(fits.any(axis=1), height[rows, first], size)
    width = np.where(fits.any(axis=1), width[rows, first], size)
    top = np.floor(rng.random(n) * (size - height + 1))
    left = np.floor(rng.random(n) * (size - width + 1))
    return np.stack([top, left, height, width], axis=1)


def _view_parameters(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``[n, 17]``: one SimCLR view of each image (crop, flip, jitter, grayscale, blur)."""
    brightness, contrast, saturation, hue = JITTER
    factors = np.stack([
        rng.uniform(1 - brightness, 1 + brightness, n),
        rng.uniform(1 - contrast, 1 + contrast, n),
        rng.uniform(1 - saturation, 1 + saturation, n),
        rng.uniform(-hue, hue, n),
    ], axis=1)
    return np.concatenate([
        _crop_boxes(rng, n, size, SIMCLR_CROP_SCALE),
        (rng.random((n, 2)) < (FLIP_P, JITTER_P)),
        factors,
        np.argsort(rng.random((n, 4)), axis=1),  # ColorJitter's random order, per image
        (rng.random((n, 2)) < (GRAYSCALE_P, BLUR_P)),
        rng.uniform(*BLUR_SIGMA, size=(n, 1)),
    ], axis=1)


# ------------------------------------------------------------------ on the training device


def augment_batch(batch: dict, plan: torch.Tensor | None = None, chunk: int = 0) -> dict:
    """A loader batch of uint8 ``images`` and ``augment`` draws -> the trainer's batch.

    ``images [B, C, 3, S, S] uint8`` becomes float32 ImageNet-normalised, and ``views
    [2, B, C, 3, S, S]`` is added when the draws hold SimCLR views; runs where the tensors
    are. ``plan``: a host copy of ``augment`` (saves a device sync; read when missing).
    ``chunk`` images are augmented at a time (0: the whole batch on a GPU, a cache's worth
    on a CPU); the result depends on neither. A batch without ``augment`` is returned as is.
    """
    if "augment" not in batch:
        return batch
    batch = dict(batch)
    params = batch.pop("augment").float()
    b, c, _, size, _ = batch["images"].shape
    raw = batch["images"].reshape(b * c, 3, size, size)
    params = params.reshape(b * c, -1)  # [B*C, P]
    plan = (params if plan is None else plan).detach().float().cpu().reshape(b * c, -1)
    simclr, on_cpu = params.shape[1] > CROP, raw.device.type == "cpu"
    images = torch.empty(raw.shape, dtype=torch.float32, device=raw.device)
    views = torch.empty((2 if simclr else 0, *raw.shape), dtype=torch.float32, device=raw.device)
    chunk = chunk or (max(1, CPU_CHUNK_PIXELS // size ** 2) if on_cpu else len(raw))
    with torch.no_grad():
        for start in range(0, len(raw), chunk):
            part = slice(start, start + chunk)
            # The crops' input: uint8 for the per-image kernels, else float made once.
            source = raw[part] if crops_per_image(raw) else raw[part].float()
            _normalise(train_crop(source, params[part, :CROP], plan[part, :CROP]),
                       out=images[part])
            for view in range(len(views)):
                columns = slice(CROP + view * VIEW, CROP + (view + 1) * VIEW)
                simclr_view(source, params[part, columns], plan[part, columns],
                            out=views[view, part])
    batch["images"] = images.view(b, c, 3, size, size)
    if simclr:
        batch["views"] = views.view(2, b, c, 3, size, size)
    return batch


def train_crop(images: torch.Tensor, boxes: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """The training image: each ``[N, 3, S, S]`` image's box (``boxes [N, 4]``, host copy
    ``plan``) resized to S x S with antialiased bicubic, float on the 0-255 grid."""
    if crops_per_image(images):
        return crop_each(images, plan, "bicubic")
    return bicubic_crops(images, boxes)


def simclr_view(images: torch.Tensor, params: torch.Tensor, plan: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, 3, S, S]`` images (uint8, or float on the 0-255 grid), ``[N, 17]`` draws of one
    view (``plan``: their host copy, which decides which images take which step) -> the
    normalised views (into ``out`` when given)."""
    # Every later step commutes with a horizontal flip: it rides with the crop.
    if crops_per_image(images):
        x = crop_each(images, plan[:, :5], "bilinear")
    else:
        x = bilinear_crops(images, params[:, :4], params[:, 4])
    _jitter_(x, params[:, 6:10], plan)
    gray = _where(plan[:, 14] > 0, x.device)
    x.index_copy_(0, gray, _luma(x.index_select(0, gray)).floor_().expand(-1, 3, -1, -1))
    blur = _where(plan[:, 15] > 0, x.device)
    x.index_copy_(0, blur, _blur(x.index_select(0, blur), params[blur, 16],
                                 blur_kernel(x.shape[-1])))
    return _normalise(x, out=x if out is None else out)


def _where(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    return mask.nonzero().squeeze(1).to(device, non_blocking=True)


def _jitter_(x: torch.Tensor, factors: torch.Tensor, plan: torch.Tensor) -> None:
    """ColorJitter in place where ``plan`` turns it on, each image with its factors and its
    order of the four ops: at each of the four steps, each op runs on the images that take
    it then (16 batched calls, whatever the batch)."""
    ops = (_brightness_, _contrast_, _saturation_, _hue_)
    on, order = plan[:, 5] > 0, plan[:, 10:14].long()
    for step in range(4):
        for op, apply in enumerate(ops):
            chosen = _where(on & (order[:, step] == op), x.device)
            if len(chosen):
                part = x.index_select(0, chosen)
                apply(part, factors[chosen, op].view(-1, 1, 1, 1))
                x.index_copy_(0, chosen, part)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` -> ``[N, 1, H, W]`` float luma (not yet on the grid)."""
    r, g, b = x.unbind(1)
    return (r * _GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2]).unsqueeze(1)


def _blend_(x: torch.Tensor, other: torch.Tensor | None, factor: torch.Tensor) -> None:
    """torchvision's uint8 blend, in place: mix, clamp, truncate."""
    x.mul_(factor)
    if other is not None:
        x.add_(other.mul_(1 - factor))
    x.clamp_(0, 255).floor_()


def _brightness_(x: torch.Tensor, factor: torch.Tensor) -> None:
    _blend_(x, None, factor)


def _contrast_(x: torch.Tensor, factor: torch.Tensor) -> None:
    _blend_(x, _luma(x).floor_().mean(dim=(1, 2, 3), keepdim=True), factor)


def _saturation_(x: torch.Tensor, factor: torch.Tensor) -> None:
    _blend_(x, _luma(x).floor_(), factor)


def _hue_(x: torch.Tensor, shift: torch.Tensor) -> None:
    """Hue rotated by ``shift`` turns in HSV (value and saturation kept), in place.

    Only float arithmetic, no comparisons: on a CPU, ``where``, ``==`` and ``remainder`` are
    several times slower than a multiply. Relies on the pixels being whole levels.
    """
    r, g, b = x.unbind(1)
    top, bottom = x.amax(1), x.amin(1)
    spread = top - bottom
    # Hue in sixths of a turn: 0 red, 2 green, 4 blue, taking the first top channel in the
    # order red, green, blue (torchvision's; a tie gives the same hue either way).
    red_top = torch.sub(r, top).add_(1).clamp_(min=0)  # 1 where red is the top, else 0
    green_top = torch.sub(g, top).add_(1).clamp_(min=0)
    green_top.addcmul_(green_top, red_top, value=-1)
    hue = (r - g).add_(spread, alpha=4)  # blue on top
    hue.addcmul_(red_top, (g - b).sub_(hue))
    hue.addcmul_(green_top, (b - r).add_(spread, alpha=2).sub_(hue))
    hue.div_(spread.clamp_min(1)).add_(shift.view(-1, 1, 1) * 6)
    hue.sub_(torch.div(hue, 6).floor_().mul_(6))  # modulo 6 (the hue is in [-1.6, 5.6))
    # HSV -> RGB: each channel is bottom + spread x a trapezoid of the hue, written straight
    # into x with torchvision's float -> uint8 scale folded into spread and bottom.
    scale = (255 + 1 - 1e-3) / 255
    spread.mul_(scale)
    bottom.mul_(scale)
    level = red_top  # reused as scratch
    for channel, centre in enumerate((3.0, 2.0, 4.0)):
        torch.sub(hue, centre, out=level).abs_()
        if channel:  # green and blue: 2 - |hue - centre|; red: |hue - 3| - 1
            level.neg_().add_(2)
        else:
            level.sub_(1)
        torch.addcmul(bottom, level.clamp_(0, 1), spread, out=x[:, channel])
    x.floor_()


def _blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Gaussian blur with each image's sigma (separable, reflect padding), rounded."""
    if len(x) == 0:
        return x
    size, pad = x.shape[-1], kernel // 2
    offsets = torch.arange(kernel, device=x.device, dtype=x.dtype) - pad
    weights = torch.softmax(-(offsets / sigma.view(-1, 1)) ** 2 / 2, dim=1)  # [N, K]
    weights = weights.view(-1, 1, 1, 1, kernel)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = padded[..., :size] * weights[..., 0]
    for tap in range(1, kernel):  # a sum of shifted copies: the same arithmetic per image
        rows.addcmul_(padded[..., tap:tap + size], weights[..., tap])
    out = rows[..., :size, :] * weights[..., 0]
    for tap in range(1, kernel):
        out.addcmul_(rows[..., tap:tap + size, :], weights[..., tap])
    return out.round_()


def _normalise(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """0-255 -> ImageNet-normalised into ``out`` (may be ``x``): the loader path's
    ``normalise()``. Writing straight into the batch saves a copy of every image."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return torch.mul(x, 1 / 255, out=out).sub_(mean).div_(std)
