"""Teacher features of SER30K images: batched, without gradients, in image order."""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from srs_core.data.report import Report
from srs_core.data.ser30k import Ser30kItem
from srs_core.emotion.images import Ser30kImages, load_split, local_root
from srs_core.runtime.precision import autocast_context

log = logging.getLogger(__name__)


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 256,
    device: torch.device | None = None,
    num_workers: int = 0,
    precision: str = "fp32",
) -> np.ndarray:
    """``model`` outputs for every item of ``dataset`` (``(image, label)`` pairs): ``[N, D]``
    float32 in dataset order."""
    device = device or next(model.parameters()).device
    model.eval()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    blocks = []
    for images, _ in tqdm(loader, desc="teacher features", unit="batch", disable=None,
                          leave=False):
        with autocast_context(device, precision):
            features = model(images.to(device, non_blocking=True))
        blocks.append(features.float().cpu().numpy())
    if not blocks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(blocks).astype(np.float32, copy=False)


def teacher_features(
    ser30k_uri: str,
    teacher: torch.nn.Module,
    split: str = "train",
    image_size: int = 128,
    batch_size: int = 256,
    report: Report | None = None,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[Ser30kItem]]:
    """Features ``[N, 2048]``, labels ``[N]`` and the items of a SER30K split's usable images.

    Unusable images (missing, undecodable, bad labels) are counted in ``report`` and left out.
    """
    report = Report() if report is None else report
    root = local_root(ser30k_uri)
    items = load_split(ser30k_uri, root, split, report)
    dataset = Ser30kImages(root, items, image_size, train=False)
    device = next(teacher.parameters()).device
    features = extract_features(teacher, dataset, batch_size, device, num_workers)
    labels = np.asarray([item.label for item in items], dtype=np.int64)
    log.info("teacher features of %d %s images: %s", len(items), split, features.shape)
    return features, labels, items
