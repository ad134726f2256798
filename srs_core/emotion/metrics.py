"""How well the emotion teacher classifies: its predictions and their metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from srs_core.data.ser30k import EMOTIONS
from srs_core.runtime.precision import autocast_context

NUM_CLASSES = len(EMOTIONS)


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES
) -> dict[str, Any]:
    """Accuracy, macro-F1 (over classes present in ``labels``), per-class accuracy, confusion.

    ``confusion[t][p]`` counts items of true class ``t`` predicted as ``p``; a class without
    items has per-class accuracy ``None``.
    """
    labels, predictions = np.asarray(labels, int), np.asarray(predictions, int)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    support = confusion.sum(axis=1)
    true_positive = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    f1 = [2 * true_positive[c] / (support[c] + predicted[c]) for c in range(num_classes)
          if support[c] > 0]
    return {
        "count": int(len(labels)),
        "accuracy": float(true_positive.sum() / max(1, len(labels))),
        "macro_f1": float(np.mean(f1)) if f1 else 0.0,
        "per_class_accuracy": {
            EMOTIONS[c] if num_classes == NUM_CLASSES else str(c):
                (float(true_positive[c] / support[c]) if support[c] else None)
            for c in range(num_classes)
        },
        "confusion": confusion.tolist(),
    }


@torch.no_grad()
def predict(model, loader, device: torch.device, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predicted classes of every item of ``loader``."""
    model.eval()
    labels, predictions = [], []
    for images, targets in loader:
        with autocast_context(device, precision):
            logits = model(images.to(device, non_blocking=True))
        predictions.append(logits.argmax(dim=1).cpu())
        labels.append(targets)
    if not labels:
        return np.zeros(0, int), np.zeros(0, int)
    return torch.cat(labels).numpy(), torch.cat(predictions).numpy()
