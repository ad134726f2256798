"""The SER30K emotion teacher: a timm ResNet50 with 7 classes (DESIGN.md section 3).

``train_teacher`` trains it (alone or under ``torchrun``), checkpoints every epoch and resumes
from the latest checkpoint when run again with the same output. Outputs under ``out_uri``::

    teacher.pth             backbone weights of the best epoch (by validation accuracy), without
                            the classifier: ``timm.create_model("resnet50", num_classes=0)``
                            loads them strictly and gives pooled 2048-d features
    metrics.json            accuracy, macro-F1, per-class accuracy, confusion matrix (val, test)
    checkpoints/latest.pt   resume state after the last finished epoch
    checkpoints/best.pt     the best epoch's full model (classifier included)

Pretrained weights are never downloaded: start from ``--init URI`` (timm-format ResNet50
weights, e.g. ImageNet) or from random initialisation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from srs_core import store
from srs_core.config import EMOTIONS, Config
from srs_core.data.report import Report
from srs_core.data.ser30k import SPLITS, annotations_uri
from srs_core.emotion.images import (
    Ser30kImages,
    class_counts,
    load_split,
    local_root,
    require_every_class,
)
from srs_core.errors import ConfigError, DataError
from srs_core.runlock import RunLock
from srs_core.train.checkpoint import CheckpointManager, load_torch, save_torch
from srs_core.train.distributed import (
    all_reduce_sum,
    autocast_context,
    barrier,
    init_distributed,
)
from srs_core.train.schedule import cosine_with_warmup

log = logging.getLogger(__name__)

ARCHITECTURE = "resnet50"
NUM_CLASSES = len(EMOTIONS)
FEATURE_DIM = 2048
WARMUP_FRACTION = 0.05  # of all optimizer steps
MIN_LR_RATIO = 0.01
# Test hook: raise right after the checkpoint of this (1-based) epoch, as a kill would.
FAIL_AFTER_EPOCH_ENV = "SRS_TEACHER_FAIL_AFTER_EPOCH"


def create_teacher_model(num_classes: int = NUM_CLASSES) -> torch.nn.Module:
    """timm ResNet50, randomly initialised (``num_classes=0``: pooled ``[N, 2048]`` features)."""
    import timm

    return timm.create_model(ARCHITECTURE, pretrained=False, num_classes=num_classes)


def backbone_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights without the classifier (``fc.*``), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if not k.startswith("fc.")}


def _timm_state_dict(uri: str) -> dict[str, Any]:
    """A timm-format state dict from ``uri``: bare, or wrapped as timm's train script and DDP
    save it (``{"state_dict": ...}`` / ``{"model": ...}``, ``module.`` prefixes)."""
    state = load_torch(uri)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{uri}: expected a state dict, got {type(state).__name__}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def load_init_weights(model: torch.nn.Module, uri: str) -> dict[str, Any]:
    """Load timm-format ResNet50 weights; a classifier of another shape is skipped, reported."""
    state = _timm_state_dict(uri)
    own = model.state_dict()
    mismatched = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    result = model.load_state_dict(
        {k: v for k, v in state.items() if k not in mismatched}, strict=False
    )
    missing_backbone = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing_backbone or len(result.unexpected_keys) > len(state) // 2:
        raise ConfigError(
            f"{uri}: not timm {ARCHITECTURE} weights: {len(missing_backbone)} backbone "
            f"tensor(s) missing (e.g. {missing_backbone[:3]}), {len(result.unexpected_keys)} "
            f"unexpected (e.g. {result.unexpected_keys[:3]}); give a timm-format state dict"
        )
    report = {"uri": uri, "loaded": len(state) - len(mismatched) - len(result.unexpected_keys),
              "shape_mismatch_skipped": mismatched, "missing": result.missing_keys,
              "unexpected": result.unexpected_keys}
    log.info("init from %s: %d tensors loaded; skipped (shape) %s; missing %s", uri,
             report["loaded"], mismatched, result.missing_keys)
    return report


def load_teacher(uri: str, device: torch.device | str) -> torch.nn.Module:
    """The frozen teacher backbone in eval mode: ``[N, 3, S, S]`` normalised -> ``[N, 2048]``.

    Takes the ``teacher.pth`` of ``srs emotion train`` or a whole timm ResNet50 classifier
    (e.g. the authors' ``ResNet50_SER30K.pth``): its ``fc.*`` classifier is dropped, reported.
    Every backbone tensor must be present with its shape.
    """
    from srs_core.model.loaders import LoadReport, load_checked

    model = create_teacher_model(num_classes=0)
    state = _timm_state_dict(uri)
    classifier = sorted(k for k in state if k.startswith("fc."))
    backbone = {k: (k, v) for k, v in state.items() if not k.startswith("fc.")}
    hint = "give the teacher.pth written by `srs emotion train` or a timm resnet50 state dict"
    report = LoadReport(uri)
    try:
        load_checked(model, backbone, report)
    except ConfigError as exc:  # a shape mismatch
        raise ConfigError(f"{uri}: not a teacher backbone ({exc}); {hint}") from None
    if report.missing or report.unexpected:
        raise ConfigError(f"{uri}: not a teacher backbone ({report}); {hint}")
    # NaN/inf weights (a diverged run) would make every feature NaN and crash k-means later
    for key, value in backbone.values():
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all():
            bad = int((~torch.isfinite(value)).sum())
            raise ConfigError(f"{uri}: tensor {key!r} has {bad} non-finite value(s) (NaN/inf) "
                              f"of {value.numel()}; the training that wrote it diverged or the "
                              f"file is damaged: {hint}")
    if classifier:
        log.info("teacher %s: dropped the classifier %s (features come from the pool)", uri,
                 classifier)
    model.requires_grad_(False)
    return model.eval().to(device)


@torch.no_grad()
def emotion_targets(
    teacher: torch.nn.Module, anchors: torch.Tensor, images: torch.Tensor
) -> torch.Tensor:
    """Distillation targets ``e @ A.T`` ``[B, C, 7K]`` of candidate images ``[B, C, 3, S, S]``.

    Always float32, also inside a bf16 autocast region: the targets reach magnitudes of
    several hundred, where bf16's spacing (2-4) would move the softmax's most likely anchor.
    """
    with torch.autocast(device_type=images.device.type, enabled=False):
        features = teacher(images.flatten(0, 1).float()).float()  # [B*C, 2048]
        logits = features @ anchors.float().T
    return logits.view(*images.shape[:2], -1)


# ----------------------------------------------------------------------------- metrics


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


# ----------------------------------------------------------------------------- training


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights (1-d tensors)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _train_epoch(model, loader, optimizer, scheduler, device, precision) -> dict[str, float]:
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, precision):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        totals += torch.stack([loss.detach().double() * len(targets),
                               (logits.argmax(1) == targets).sum().double(),
                               torch.tensor(float(len(targets)), device=device)])
    loss_sum, correct, count = all_reduce_sum(totals).tolist()
    return {"train_loss": loss_sum / max(count, 1), "train_accuracy": correct / max(count, 1)}


def _loader(dataset, cfg: Config, device, sampler=None, shuffle_drop: bool = False):
    e = cfg.emotion
    return torch.utils.data.DataLoader(
        dataset, batch_size=e.batch_size, sampler=sampler, num_workers=e.num_workers,
        pin_memory=device.type == "cuda", drop_last=shuffle_drop,
        persistent_workers=e.num_workers > 0,
    )


def train_teacher(cfg: Config, out_uri: str, init_uri: str = "") -> dict[str, Any]:
    """Train (or resume) the teacher on ``cfg.emotion.ser30k``; returns ``metrics.json``'s content.

    The best epoch is chosen by validation accuracy; the test split is scored once, at the end.
    Rank 0 holds ``out_uri``'s run lock: a second run on the same output is refused.
    """
    dist = init_distributed()
    lock = RunLock(out_uri, "srs emotion train") if dist.is_master else contextlib.nullcontext()
    with lock:
        return _train_teacher(cfg, out_uri, init_uri, dist)


def _train_teacher(cfg: Config, out_uri: str, init_uri: str, dist) -> dict[str, Any]:
    e = cfg.emotion
    started = time.time()
    device = dist.device
    report = Report()
    if dist.is_master:
        local_root(e.ser30k)  # one rank downloads an s3:// tree, the others find it cached
    barrier()
    root = local_root(e.ser30k)
    items = {split: load_split(e.ser30k, root, split, report) for split in SPLITS}
    require_every_class(items["train"], annotations_uri(e.ser30k, "train"))
    if not items["val"]:
        raise DataError(f"{annotations_uri(e.ser30k, 'val')}: no usable validation images; "
                        "the best epoch is chosen on the validation split")

    torch.manual_seed(e.seed)  # identical initial weights on every rank
    model = create_teacher_model()
    init_report = load_init_weights(model, init_uri) if init_uri else None
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trained = model
    if dist.world_size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    train_set = Ser30kImages(root, items["train"], e.image_size, train=True)
    sampler = torch.utils.data.DistributedSampler(
        train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=e.seed)
    # drop a ragged last batch (BatchNorm and step sizes) unless it is the only one
    loader = _loader(train_set, cfg, device, sampler, shuffle_drop=len(sampler) > e.batch_size)
    val_loader = _loader(Ser30kImages(root, items["val"], e.image_size, train=False), cfg, device)
    total_steps = max(1, len(loader) * e.epochs)
    optimizer = torch.optim.AdamW(_param_groups(model, e.weight_decay), lr=e.lr)
    scheduler = cosine_with_warmup(optimizer, round(WARMUP_FRACTION * total_steps), total_steps,
                                   MIN_LR_RATIO)

    checkpoints = CheckpointManager(store.join(out_uri, "checkpoints"))
    best_uri = checkpoints.uri("best.pt")
    epoch, best_accuracy, best_epoch, history = 0, -1.0, 0, []
    state = checkpoints.latest()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, best_accuracy = state["epoch"], state["best_accuracy"]
        best_epoch, history = state["best_epoch"], state["history"]
        log.info("teacher: resuming after epoch %d of %d", epoch, e.epochs)

    while epoch < e.epochs:
        sampler.set_epoch(epoch)
        # augmentation randomness depends only on (seed, epoch, rank): a resumed run repeats it
        torch.manual_seed(e.seed * 100_003 + epoch * 1_009 + dist.rank)
        record = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0]}
        record.update(_train_epoch(trained, loader, optimizer, scheduler, device, e.precision))
        epoch += 1
        if dist.is_master:
            val = classification_metrics(*predict(model, val_loader, device, e.precision))
            record["val_accuracy"] = val["accuracy"]
            if val["accuracy"] > best_accuracy:
                best_accuracy, best_epoch = val["accuracy"], epoch
                save_torch(model.state_dict(), best_uri)
            history.append(record)
            checkpoints.save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch,
                "best_accuracy": best_accuracy, "best_epoch": best_epoch, "history": history,
            }, "latest.pt")
            log.info("teacher epoch %d/%d: loss %.4f train acc %.3f val acc %.3f", epoch,
                     e.epochs, record["train_loss"], record["train_accuracy"],
                     record["val_accuracy"])
        barrier()
        if os.environ.get(FAIL_AFTER_EPOCH_ENV) == str(epoch):
            raise RuntimeError(f"{FAIL_AFTER_EPOCH_ENV}={epoch}: injected failure")

    metrics: dict[str, Any] = {}
    if dist.is_master:
        model.load_state_dict(load_torch(best_uri))
        metrics = {"classes": list(EMOTIONS), "best_epoch": best_epoch, "epochs": e.epochs}
        for split in ("val", "test"):
            dataset = Ser30kImages(root, items[split], e.image_size, train=False)
            metrics[split] = classification_metrics(
                *predict(model, _loader(dataset, cfg, device), device, e.precision))
        save_torch(backbone_state_dict(model), store.join(out_uri, "teacher.pth"))
        metrics.update({
            "history": history, "images": {s: len(items[s]) for s in SPLITS},
            "train_class_counts": dict(zip(EMOTIONS, class_counts(items["train"]), strict=True)),
            "skipped": report.as_dict(), "init": init_report, "image_size": e.image_size,
            "world_size": dist.world_size, "device": str(device), "precision": e.precision,
            "seconds": round(time.time() - started, 2),
            "teacher": store.join(out_uri, "teacher.pth"),
        })
        store.write_text(store.join(out_uri, "metrics.json"), json.dumps(metrics, indent=2))
        log.info("teacher: best epoch %d, val acc %.4f, test acc %.4f", best_epoch,
                 metrics["val"]["accuracy"], metrics["test"]["accuracy"])
    barrier()
    return metrics
