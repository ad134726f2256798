"""The SER30K emotion teacher: a timm ResNet50 with 7 classes (DESIGN.md section 3).

``train_teacher`` trains it (alone or under ``torchrun``), checkpoints every epoch and resumes
from the latest checkpoint when run again with the same output. Outputs under ``out_uri``::

    teacher.pth             backbone weights of the best epoch (by validation accuracy), without
                            the classifier: ``timm.create_model("resnet50", num_classes=0)``
                            loads them strictly and gives pooled 2048-d features
    metrics.json            accuracy, macro-F1, per-class accuracy, confusion matrix (val, test)
    checkpoints/ckpt-<epoch>.pt  resume state after each epoch, recording ``SETTINGS``
    checkpoints/best.pt     the best epoch's full model (classifier included)

Pretrained weights are never downloaded: start from ``--init URI`` (timm-format ResNet50
weights, e.g. ImageNet) or from random initialisation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from srs_core import store
from srs_core.artifacts import TeacherOutputs
from srs_core.config import Config
from srs_core.data.report import Report
from srs_core.data.ser30k import EMOTIONS, SPLITS, annotations_uri
from srs_core.emotion.images import (
    Ser30kImages,
    class_counts,
    load_split,
    local_root,
    require_every_class,
)
from srs_core.emotion.metrics import NUM_CLASSES, classification_metrics, predict
from srs_core.errors import ConfigError, DataError
from srs_core.model import param_groups
from srs_core.runtime.checkpoint import load_torch, save_torch
from srs_core.runtime.device import memory_format_for
from srs_core.runtime.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from srs_core.runtime.precision import autocast_context, fp32_island
from srs_core.runtime.schedule import cosine_with_warmup
from srs_core.runtime.trainer import (
    TrainState,
    build_optimizer,
    keep_best,
    open_checkpoints,
    resume,
    run_lock,
    save_checkpoint,
    wrap_ddp,
)

log = logging.getLogger(__name__)

ARCHITECTURE = "resnet50"
FEATURE_DIM = 2048
WARMUP_FRACTION = 0.05  # of all optimizer steps
MIN_LR_RATIO = 0.01
SETTINGS = ("ser30k", "image_size", "epochs", "batch_size", "lr", "weight_decay", "seed")


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


def load_teacher(uri: str, device: torch.device | str,
                 memory_format: str = "auto") -> torch.nn.Module:
    """The frozen teacher backbone in eval mode: ``[N, 3, S, S]`` normalised -> ``[N, 2048]``,
    its weights in ``memory_format`` (:func:`srs_core.runtime.device.memory_format_for`).

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
    return model.eval().to(device, memory_format=memory_format_for(device, memory_format))


@torch.no_grad()
def emotion_targets(
    teacher: torch.nn.Module, anchors: torch.Tensor, images: torch.Tensor
) -> torch.Tensor:
    """Distillation targets ``e @ A.T`` ``[B, C, 7K]`` of candidate images ``[B, C, 3, S, S]``.

    Always float32, also inside a bf16 autocast region: the targets reach magnitudes of
    several hundred, where bf16's spacing (2-4) would move the softmax's most likely anchor.
    """
    with fp32_island(images.device):
        features = teacher(images.flatten(0, 1).float()).float()  # [B*C, 2048]
        logits = features @ anchors.float().T
    return logits.view(*images.shape[:2], -1)


# ----------------------------------------------------------------------------- training


def train_epoch(model, loader, optimizer, scheduler, device, precision,
                memory_format: str = "auto") -> dict[str, float]:
    """One pass over ``loader``'s ``(images [N, 3, S, S], labels [N])`` batches (in
    ``memory_format``, as the model's weights); the mean loss and accuracy over every rank."""
    model.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        images = images.contiguous(memory_format=memory_format_for(device, memory_format))
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


@dataclass
class TeacherState(TrainState):
    """Where a teacher run stands; these are the keys of its checkpoints besides the model,
    optimizer and scheduler."""

    epoch: int = 0  # epochs done
    best_accuracy: float = -1.0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # one record per epoch (rank 0's)


def train_teacher(
    cfg: Config, out_uri: str, init_uri: str = "", *,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the teacher on ``cfg.emotion.ser30k``; returns ``metrics.json``'s content.

    The best epoch is chosen by validation accuracy; the test split is scored once, at the end.
    Rank 0 holds ``out_uri``'s run lock: a second run on the same output is refused.
    ``on_epoch_end(epoch)`` is called on every rank once epoch ``epoch`` (1-based) is
    checkpointed: to report progress, or to stop the run there (an exception it raises ends
    the run as a kill would, and running again resumes after that epoch).
    """
    dist = init_distributed()
    with run_lock(dist, out_uri, "srs emotion train"):
        return _train_teacher(cfg, TeacherOutputs(out_uri), init_uri, dist, on_epoch_end)


def _load_items(ser30k: str, dist: DistInfo, report: Report) -> tuple[str, dict[str, list]]:
    """The local SER30K root and every split's usable items (train covers every class)."""
    if dist.is_master:
        local_root(ser30k)  # one rank downloads an s3:// tree, the others find it cached
    barrier()
    root = local_root(ser30k)
    items = {split: load_split(ser30k, root, split, report) for split in SPLITS}
    require_every_class(items["train"], annotations_uri(ser30k, "train"))
    if not items["val"]:
        raise DataError(f"{annotations_uri(ser30k, 'val')}: no usable validation images; "
                        "the best epoch is chosen on the validation split")
    return root, items


def build_teacher(seed: int, init_uri: str, device: torch.device,
                  memory_format: str = "auto") -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The classifier to train (from ``init_uri`` when given; weights in ``memory_format``,
    ``emotion.memory_format``) and its init report."""
    torch.manual_seed(seed)  # identical initial weights on every rank
    model = create_teacher_model()
    init_report = load_init_weights(model, init_uri) if init_uri else None
    model.to(device, memory_format=memory_format_for(device, memory_format))
    return model, init_report


def _loaders(cfg: Config, root: str, items: dict[str, list], dist: DistInfo):
    """This rank's shuffled shard of train (its sampler and loader) and the validation loader."""
    e, device = cfg.emotion, dist.device
    train_set = Ser30kImages(root, items["train"], e.image_size, train=True)
    sampler = torch.utils.data.DistributedSampler(
        train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=e.seed)
    # drop a ragged last batch (BatchNorm and step sizes) unless it is the only one
    loader = _loader(train_set, cfg, device, sampler, shuffle_drop=len(sampler) > e.batch_size)
    val_loader = _loader(Ser30kImages(root, items["val"], e.image_size, train=False), cfg, device)
    return sampler, loader, val_loader


def _log_epoch(record: dict[str, Any], epochs: int) -> None:
    log.info("teacher epoch %d/%d: loss %.4f train acc %.3f val acc %.3f", record["epoch"],
             epochs, record["train_loss"], record["train_accuracy"], record["val_accuracy"])


def _score_best(cfg: Config, model: torch.nn.Module, best_uri: str, root: str,
                items: dict[str, list], best_epoch: int, outputs: TeacherOutputs) -> dict[str, Any]:
    """Load the best epoch's weights into ``model``, score val and test, write
    ``teacher.pth``; returns the metrics."""
    e, device = cfg.emotion, next(model.parameters()).device
    model.load_state_dict(load_torch(best_uri))
    metrics: dict[str, Any] = {"classes": list(EMOTIONS), "best_epoch": best_epoch,
                               "epochs": e.epochs}
    for split in ("val", "test"):
        dataset = Ser30kImages(root, items[split], e.image_size, train=False)
        metrics[split] = classification_metrics(
            *predict(model, _loader(dataset, cfg, device), device, e.precision))
    save_torch(backbone_state_dict(model), outputs.weights)
    return metrics


def _train_teacher(cfg: Config, outputs: TeacherOutputs, init_uri: str, dist: DistInfo,
                   on_epoch_end: Callable[[int], None] | None) -> dict[str, Any]:
    e, device, started, report = cfg.emotion, dist.device, time.time(), Report()
    root, items = _load_items(e.ser30k, dist, report)
    model, init_report = build_teacher(e.seed, init_uri, device, e.memory_format)
    trained = wrap_ddp(model, dist)
    sampler, loader, val_loader = _loaders(cfg, root, items, dist)
    total_steps = max(1, len(loader) * e.epochs)
    optimizer = build_optimizer(param_groups(model, e.weight_decay), lr=e.lr)
    scheduler = cosine_with_warmup(optimizer, round(WARMUP_FRACTION * total_steps), total_steps,
                                   MIN_LR_RATIO)

    settings = {f"emotion.{k}": getattr(e, k) for k in SETTINGS}
    checkpoints = open_checkpoints(dist, outputs.checkpoints, {**settings, "train_images": len(
        items["train"])}, cfg.train.keep_checkpoints, cfg.train.on_settings_change)
    state, best_uri = TeacherState(), checkpoints.manager.uri("best.pt")  # with the classifier
    if resume(checkpoints, state, model=model, optimizer=optimizer, scheduler=scheduler):
        log.info("teacher: resuming after epoch %d of %d", state.epoch, e.epochs)

    def save_best(_: dict) -> None:
        state.best_epoch = state.epoch
        save_torch(model.state_dict(), best_uri)

    while state.epoch < e.epochs:
        sampler.set_epoch(state.epoch)
        # augmentation randomness depends only on (seed, epoch, rank): a resumed run repeats it
        torch.manual_seed(e.seed * 100_003 + state.epoch * 1_009 + dist.rank)
        record = {"epoch": state.epoch + 1, "lr": scheduler.get_last_lr()[0]}
        record.update(train_epoch(trained, loader, optimizer, scheduler, device, e.precision,
                                  e.memory_format))
        state.epoch += 1
        val, state.best_accuracy = keep_best(
            dist.is_master, state.best_accuracy,
            lambda: classification_metrics(*predict(model, val_loader, device, e.precision)),
            "accuracy", save_best)
        if val is not None:  # rank 0
            record["val_accuracy"] = val["accuracy"]
            state.history.append(record)
            save_checkpoint(checkpoints, state, state.epoch, model=model, optimizer=optimizer,
                            scheduler=scheduler)
            _log_epoch(record, e.epochs)
        barrier()
        if on_epoch_end is not None:
            on_epoch_end(state.epoch)

    metrics: dict[str, Any] = {}
    if dist.is_master:
        metrics = _score_best(cfg, model, best_uri, root, items, state.best_epoch, outputs)
        metrics.update({
            "history": state.history, "images": {s: len(items[s]) for s in SPLITS},
            "train_class_counts": dict(zip(EMOTIONS, class_counts(items["train"]), strict=True)),
            "skipped": report.as_dict(), "init": init_report, "image_size": e.image_size,
            "world_size": dist.world_size, "device": str(device), "precision": e.precision,
            "seconds": round(time.time() - started, 2), "teacher": outputs.weights,
        })
        store.write_text(outputs.metrics, json.dumps(metrics, indent=2))
        log.info("teacher: best epoch %d, val acc %.4f, test acc %.4f", metrics["best_epoch"],
                 metrics["val"]["accuracy"], metrics["test"]["accuracy"])
    barrier()
    return metrics
