"""The SRS training loop: `srs train` under torchrun (any number of processes) or alone.

Restarting the same command resumes from the latest checkpoint under ``train.output`` (this
is what a restarted PyTorchJob pod does): model, optimizer, step, epoch, the
position inside the epoch and every rank's RNG states are restored, so no data position
repeats. Augmentations depend only on (seed, epoch, dialog), so a resumed run is
bit-identical to an uninterrupted one on the same hardware (tested with 2 ranks).

Outputs under ``train.output``::

    checkpoints/latest.pt   resume state (written every ``train.checkpoint_every`` steps
                            and at every epoch end, atomically)
    best.pt                 the best model by validation MAP (self-contained, see session)
    history.jsonl           one line per logged step and per validation
    train_summary.json      what the run did
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict

import numpy as np
import torch

from srs_core import store
from srs_core.config import Config
from srs_core.data.report import Report
from srs_core.emotion.teacher import emotion_targets, load_teacher
from srs_core.errors import ConfigError
from srs_core.evaluate import TIES, score_examples, summarize
from srs_core.runlock import RunLock
from srs_core.train.checkpoint import CheckpointManager, load_torch, save_torch
from srs_core.train.data import ResumableSampler, SrsDataset, load_examples, make_collate
from srs_core.train.distributed import (
    all_gather_objects,
    autocast_context,
    barrier,
    init_distributed,
)
from srs_core.train.schedule import PAPER_GLOBAL_BATCH, SelectorSchedule, lr_scale
from srs_core.train.session import (
    Tokenizer,
    build_model,
    cache_uri,
    prepare_sticker_cache,
    resolve_lowercase,
    resolve_vocab,
)

log = logging.getLogger(__name__)


def _load_emotion(cfg: Config, device: torch.device):
    """Frozen teacher and anchors ``[7K, 2048]``, or ``(None, None)`` when unused."""
    if not cfg.loss.emotion:
        return None, None
    if not cfg.emotion.teacher or not cfg.emotion.anchors:
        raise ConfigError(
            "loss.emotion is on but emotion.teacher / emotion.anchors are not set; give both "
            "URIs (from `srs emotion train` and `srs emotion anchors`) or set loss.emotion=false"
        )
    anchors = np.load(store.fetch(cfg.emotion.anchors), allow_pickle=False)
    if anchors.ndim != 2 or anchors.shape[0] % 7:
        raise ConfigError(f"{cfg.emotion.anchors}: anchors must be [7*K, D], got {anchors.shape}")
    teacher = load_teacher(cfg.emotion.teacher, device)
    return teacher, torch.from_numpy(np.nan_to_num(anchors)).float().to(device)


def _initialise(model, cfg: Config) -> None:
    from srs_core.model.loaders import load_albef_vision, load_bert_text
    if cfg.model.vision_init:
        report = load_albef_vision(model, load_torch(cfg.model.vision_init))
        log.info("vision init from %s: %s", cfg.model.vision_init, report)
    if cfg.model.text_init:
        weights = _read_bert_weights(cfg.model.text_init)
        report = load_bert_text(model, weights)
        log.info("text init from %s: %s", cfg.model.text_init, report)


def _read_bert_weights(root: str) -> dict:
    """State dict of a Hugging Face BERT directory (safetensors or pytorch_model.bin)."""
    safetensors_uri = store.join(root, "model.safetensors")
    if store.exists(safetensors_uri):
        from safetensors.torch import load_file

        return load_file(str(store.fetch(safetensors_uri)))
    return load_torch(store.join(root, "pytorch_model.bin"))


class History:
    """Appends JSON lines to ``history.jsonl`` (master only), keeping what was already there."""

    def __init__(self, uri: str, enabled: bool) -> None:
        self.uri, self.enabled = uri, enabled
        self.lines: list[str] = []
        if enabled and store.exists(uri):
            self.lines = store.read_text(uri).splitlines()

    def add(self, record: dict) -> None:
        if self.enabled:
            self.lines.append(json.dumps(record))

    def flush(self) -> None:
        if self.enabled:
            store.write_text(self.uri, "\n".join(self.lines) + "\n")


def _global_batch(cfg: Config, world_size: int, is_master: bool) -> tuple[int, float]:
    """Dialogs per optimizer step and the factor on the learning rates; says both."""
    global_batch = cfg.train.batch_size * world_size
    if cfg.train.global_batch_size and cfg.train.global_batch_size != global_batch:
        raise ConfigError(
            f"train.global_batch_size={cfg.train.global_batch_size} but this run has "
            f"{cfg.train.batch_size} dialogs x {world_size} processes = {global_batch}; change "
            "train.batch_size or the number of processes, or unset train.global_batch_size"
        )
    scale = lr_scale(global_batch, cfg.train.lr_scaling)
    if is_master:
        log.info("global batch %d (%d dialogs x %d processes); lr %.3g (%s scaling x%.3g)",
                 global_batch, cfg.train.batch_size, world_size, cfg.train.lr * scale,
                 cfg.train.lr_scaling, scale)
        if global_batch != PAPER_GLOBAL_BATCH:
            log.warning(
                "global batch %d differs from the paper's %d (2 GPUs x 4 dialogs at lr 1e-4): "
                "%.3gx the dialogs per step and %.3gx fewer steps; train.lr_scaling=%s",
                global_batch, PAPER_GLOBAL_BATCH, global_batch / PAPER_GLOBAL_BATCH,
                global_batch / PAPER_GLOBAL_BATCH, cfg.train.lr_scaling)
    return global_batch, scale


class _Selection:
    """Which split and protocol choose ``best.pt``, and when.

    ``strict``: validation MAP after every epoch. ``paper``: as the authors' code, *test* MAP
    under their protocol, ``eval.paper_evals_per_epoch`` times per epoch and after each.
    """

    def __init__(self, cfg: Config, cache, tokenize, device, steps_per_epoch: int,
                 report: Report) -> None:
        self.cfg, self.cache, self.tokenize, self.device = cfg, cache, tokenize, device
        paper = cfg.eval.protocol == "paper"
        split = "test" if paper else "val"
        self.protocol = "paper" if paper else "strict"
        self.label = f"{split} ({self.protocol} protocol)"
        self.history_key = "val" if not paper else "test_paper"
        self.every = max(1, steps_per_epoch // cfg.eval.paper_evals_per_epoch) if paper else 0
        if paper:
            log.warning("eval.protocol=paper: best.pt is selected on the TEST split, as the "
                        "authors did; its test figures are not a held-out estimate")
        self.examples = load_examples(cfg.data.stickerchat, split, cache, None,
                                      cfg.data.max_dialogs, report, cfg.data.strict,
                                      protocol=self.protocol)

    def due_mid_epoch(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def evaluate(self, model) -> dict[str, float]:
        scores = score_examples(model, self.examples, self.cache, self.tokenize, self.device,
                                batch_size=self.cfg.eval.batch_size, progress=False)
        return summarize(scores, TIES[self.protocol])


def _rng_state(device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """This rank's random state: augmentations (global CPU/CUDA) and hard-negative draws."""
    state = {"cpu": torch.get_rng_state(), "mining": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    return state


def _restore_rng(saved: list[dict], rank: int, device: torch.device,
                 generator: torch.Generator) -> None:
    """Restore this rank's state; a job resumed on another world size keeps fresh seeds for
    the ranks it did not have (the data position is exact either way)."""
    if rank >= len(saved):
        log.warning("checkpoint has RNG states of %d ranks; rank %d keeps its seed", len(saved),
                    rank)
        return
    torch.set_rng_state(saved[rank]["cpu"])
    generator.set_state(saved[rank]["mining"])
    if device.type == "cuda" and "cuda" in saved[rank]:
        torch.cuda.set_rng_state(saved[rank]["cuda"], device)


def train(cfg: Config) -> dict:
    """Train (or resume) the selector; returns the run summary.

    Rank 0 holds the output's run lock (:mod:`srs_core.runlock`) throughout: a second run on
    the same ``train.output`` is refused before any work.
    """
    dist = init_distributed()
    lock = RunLock(cfg.train.output, "srs train") if dist.is_master else contextlib.nullcontext()
    with lock:
        return _train(cfg, dist)


def _train(cfg: Config, dist) -> dict:
    device = dist.device
    torch.manual_seed(cfg.train.seed + dist.rank)
    output = cfg.train.output
    report = Report(strict=cfg.data.strict)

    if dist.is_master:
        prepare_sticker_cache(cfg, report)
    barrier()
    from srs_core.data.sticker_cache import load_sticker_cache

    cache = load_sticker_cache(cache_uri(cfg))
    polarity = None
    if cfg.data.sentiment:
        from srs_core.sentiment import read_polarity

        polarity = read_polarity(store.join(cfg.data.sentiment, "train.jsonl"))
    train_examples = load_examples(cfg.data.stickerchat, "train", cache, polarity,
                                   cfg.data.max_dialogs, report, cfg.data.strict)
    if report.counts:
        log.warning("data problems (counted, skipped): %s", dict(report.counts))

    vocab_uri = store.join(output, "vocab.txt")
    if dist.is_master and not store.exists(vocab_uri):
        store.write_text(vocab_uri, resolve_vocab(cfg, train_examples))
    barrier()
    tokenize = Tokenizer(store.read_text(vocab_uri), cfg.data.max_text_tokens,
                         lowercase=resolve_lowercase(cfg))

    from srs_core.model import convert_sync_batchnorm, param_groups
    from srs_core.model.losses import compute_losses

    teacher, anchors = _load_emotion(cfg, device)
    if anchors is not None:
        num_anchor_logits = anchors.shape[0]
    elif cfg.emotion.anchors:  # distillation off, but keep the head the anchors' size
        num_anchor_logits = np.load(store.fetch(cfg.emotion.anchors), mmap_mode="r").shape[0]
    else:
        num_anchor_logits = 7 * cfg.emotion.k
    model = build_model(cfg.model, num_anchor_logits, tokenize.vocab_size)
    _initialise(model, cfg)
    model.to(device)
    if dist.world_size > 1:
        model = convert_sync_batchnorm(model, device)  # SyncBatchNorm exists on CUDA only
        every_term_on = all(getattr(cfg.loss, k) for k in (
            "ita", "itm", "simclr_intra", "simclr_inter", "emotion"))
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not every_term_on,
        )
    else:
        ddp = model

    global_batch, scale = _global_batch(cfg, dist.world_size, dist.is_master)
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.train.weight_decay, cfg.train.weight_decay_rule),
        lr=cfg.train.lr * scale,
    )
    sampler = ResumableSampler(len(train_examples), dist.rank, dist.world_size,
                               cfg.train.seed, shuffle=True)
    steps_per_epoch = max(1, sampler.per_rank // cfg.train.batch_size)
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    schedule = SelectorSchedule(
        optimizer, cfg.train.lr_schedule, lr=cfg.train.lr * scale,
        min_lr=cfg.train.min_lr * scale, warmup_lr=cfg.train.warmup_lr * scale,
        epochs=cfg.train.epochs, warmup_epochs=cfg.train.warmup_epochs,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        warmup_step_iterations=cfg.train.warmup_step_iterations,
    )
    selection = _Selection(cfg, cache, tokenize, device, steps_per_epoch, report)

    checkpoints = CheckpointManager(store.join(output, "checkpoints"))
    state = checkpoints.latest()
    step, epoch, position, best_map = 0, 0, 0, -math.inf
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        best_map = state["best_map"]
        log.info("resumed from step %d (epoch %d, batch %d)", step, epoch, position)

    history = History(store.join(output, "history.jsonl"), dist.is_master)
    dataset = SrsDataset(train_examples, cache, train=True,
                         simclr=cfg.loss.simclr_intra or cfg.loss.simclr_inter,
                         seed=cfg.train.seed)
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + dist.rank)
    if state is not None:
        _restore_rng(state.get("rng", []), dist.rank, device, generator)

    def save(name: str) -> None:
        rng = all_gather_objects(_rng_state(device, generator))  # every rank's, in rank order
        if not dist.is_master:
            return
        checkpoints.save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "epoch": epoch,
            "position": position, "best_map": best_map, "rng": rng,
        }, name)
        history.flush()

    def save_best(metrics: dict) -> None:
        if not dist.is_master:
            return
        payload = {
            "model": model.state_dict(), "model_config": asdict(cfg.model),
            "vocab": tokenize.vocab_text, "num_anchor_logits": num_anchor_logits,
            "step": step, "epoch": epoch, "selected_on": selection.label, "val": metrics,
            "sticker_cache": cache_uri(cfg), "lowercase": tokenize.lowercase,
        }
        save_torch(payload, store.join(output, "best.pt"))

    def select(best: float) -> float:
        """Evaluate on the selection split (master only) and keep ``best.pt``."""
        if not dist.is_master:
            return best
        metrics = selection.evaluate(model)
        history.add({"step": step, "epoch": epoch, selection.history_key: metrics})
        log.info("%s at step %d: MAP %.4f R10@1 %.4f", selection.label, step, metrics["MAP"],
                 metrics["R10@1"])
        if metrics["MAP"] > best:
            best = metrics["MAP"]
            save_best(metrics)
        return best

    started, seen = time.time(), 0
    done = bool(cfg.train.max_steps) and step >= cfg.train.max_steps
    while epoch < cfg.train.epochs and not done:
        sampler.set_epoch(epoch, skip=position * cfg.train.batch_size)
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
            num_workers=cfg.train.num_workers, collate_fn=make_collate(tokenize),
            persistent_workers=False,
            # Its own generator: creating the iterator draws a base seed, and from the global
            # RNG that draw would shift the dropout masks of a resumed run.
            generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch),
        )
        ddp.train()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            teacher_logits = None
            if teacher is not None:
                teacher_logits = emotion_targets(teacher, anchors, batch["images"])
            with autocast_context(device, cfg.train.precision):
                losses = compute_losses(ddp, batch, teacher_logits, cfg.loss, generator)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            lr = schedule.apply(epoch, position, step)
            optimizer.step()
            step, position = step + 1, position + 1
            seen += cfg.train.batch_size * dist.world_size
            if step % cfg.train.log_every == 0 or step == 1:
                elapsed = time.time() - started
                rate = seen / max(elapsed, 1e-9)
                remaining = (total_steps - step) * cfg.train.batch_size * dist.world_size
                record = {"step": step, "epoch": epoch, "lr": lr,
                          "dialogs_per_s": round(rate, 2), "eta_s": round(remaining / rate, 1),
                          **{k: round(v.detach().item(), 5) for k, v in losses.items()}}
                history.add(record)
                if dist.is_master:
                    log.info("step %d/%d epoch %d loss %.4f %.1f dialogs/s eta %.0fs", step,
                             total_steps, epoch, record["loss"], rate, record["eta_s"])
            if selection.due_mid_epoch(step) and position < steps_per_epoch:
                best_map = select(best_map)
                ddp.train()
            if step % cfg.train.checkpoint_every == 0:
                save("latest.pt")
            if cfg.train.max_steps and step >= cfg.train.max_steps:
                done = True
                break
        if not done:
            epoch, position = epoch + 1, 0
        best_map = select(best_map)
        save("latest.pt")
        barrier()

    summary = {
        "steps": step, "epochs": epoch, "best_MAP": best_map,
        "selected_on": selection.label, "protocol": cfg.eval.protocol,
        "train_dialogs": len(train_examples), "selection_dialogs": len(selection.examples),
        "world_size": dist.world_size, "global_batch": global_batch,
        "lr": cfg.train.lr * scale, "lr_scaling": cfg.train.lr_scaling, "rank": dist.rank,
        "seconds": round(time.time() - started, 2),
        "dialogs_per_s": round(seen / max(time.time() - started, 1e-9), 2),
        "skipped": report.as_dict(), "best": store.join(output, "best.pt"),
    }
    if dist.is_master:
        store.write_text(store.join(output, "train_summary.json"), json.dumps(summary, indent=2))
    barrier()
    return summary
