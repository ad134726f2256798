"""The SRS training loop: `srs train` under torchrun (any number of processes) or alone.

Restarting the same command resumes from the newest checkpoint under ``train.output`` (this
is what a restarted PyTorchJob pod does): model, optimizer, step, epoch, the
position inside the epoch and every rank's RNG states are restored, so no data position
repeats. A checkpoint records the settings that define the data order and the optimisation
(:meth:`SelectorTrainer.settings`); a resume with any of them changed is refused unless
``train.on_settings_change=restart_schedule`` (``--restart-schedule``). SIGTERM stops the run
at the next step boundary: every rank finishes its step, a checkpoint is written and the run
raises :class:`~srs_core.runtime.trainer.Preempted` (``srs train`` exits 143).
Augmentations depend only on (seed, epoch, dialog), so a resumed run is bit-identical to
an uninterrupted one on the same hardware (tested with 2 ranks). Steps, positions, the LR
schedule and the log/checkpoint cadences count optimizer steps; with
``train.grad_accumulation`` each step consumes that many micro-batches.

Outputs under ``train.output`` (:class:`srs_core.artifacts.TrainOutputs`)::

    checkpoints/ckpt-<step>.pt
                            resume state (written every ``train.checkpoint_every`` steps,
                            at every epoch end and on SIGTERM, atomically; the newest
                            ``train.keep_checkpoints`` kept, ``LATEST`` names the newest):
                            model, optimizer, the run's settings and the fields of
                            :class:`SelectorState`
    best.pt                 the best model by validation MAP (self-contained, see
                            :class:`srs_core.model.checkpoint.BestCheckpoint`)
    history.jsonl           one line per logged step and per validation
    train_summary.json      what the run did
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from srs_core import store
from srs_core.artifacts import TrainOutputs
from srs_core.config import Config
from srs_core.data.augment import augment_batch, augment_on_device
from srs_core.data.dataset import ResumableSampler, SrsDataset
from srs_core.data.prepare import cache_uri
from srs_core.data.report import Report
from srs_core.emotion.teacher import emotion_targets
from srs_core.metrics import metric_lines
from srs_core.model import param_groups
from srs_core.model.checkpoint import BestCheckpoint
from srs_core.model.losses import compute_losses
from srs_core.runtime.distributed import DistInfo, all_gather_objects, barrier, init_distributed
from srs_core.runtime.precision import autocast_context
from srs_core.runtime.trainer import (
    Preempted,
    StopRequest,
    TrainState,
    build_optimizer,
    gradient_sync,
    keep_best,
    open_checkpoints,
    restore_rng,
    resume,
    rng_state,
    run_lock,
    save_checkpoint,
)
from srs_core.train.batches import mean_losses, optimizer_steps, train_loader
from srs_core.train.build import (
    anchor_logit_count,
    build_selector,
    build_tokenizer,
    distribute,
    load_emotion,
    load_train_examples,
)
from srs_core.train.schedule import global_batch, selector_schedule
from srs_core.train.selection import History, Selection

log = logging.getLogger(__name__)


@dataclass
class SelectorState(TrainState):
    """Where an SRS run stands; these are the keys of a checkpoint besides model/optimizer."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # optimizer steps done in the current epoch
    best_map: float = -math.inf
    rng: list[dict] = field(default_factory=list)  # every rank's rng_state(), in rank order

    optional: ClassVar[frozenset[str]] = frozenset({"rng"})


def train(cfg: Config) -> dict:
    """Train (or resume) the selector; returns the run summary.

    Rank 0 holds the output's run lock (:mod:`srs_core.runlock`) throughout: a second run on
    the same ``train.output`` is refused before any work.
    """
    dist = init_distributed()
    with run_lock(dist, cfg.train.output, "srs train"):
        return SelectorTrainer(cfg, dist).fit()


class SelectorTrainer:
    """One SRS run: built in ``__init__`` (the order fixes every random draw), run by ``fit``."""

    def __init__(self, cfg: Config, dist: DistInfo) -> None:
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        torch.manual_seed(cfg.train.seed + dist.rank)
        self.outputs = TrainOutputs(cfg.train.output)
        self.report = Report(strict=cfg.data.strict)
        self.cache, self.examples = load_train_examples(cfg, dist, self.report)
        self.tokenize = build_tokenizer(cfg, dist, self.examples, self.outputs.vocab)
        # The teacher is built before the selector: both draw their initial weights.
        self.teacher, self.anchors = load_emotion(cfg, self.device)
        self.num_anchor_logits = anchor_logit_count(cfg, self.anchors)
        model = build_selector(cfg, self.num_anchor_logits, self.tokenize.vocab_size,
                               self.device)
        self.model, self.trained = distribute(model, cfg, dist)
        self._build_optimization()
        self.selection = Selection(cfg, self.cache, self.tokenize, self.device,
                                   self.steps_per_epoch, self.report)
        self._resume()
        self.stop = StopRequest()  # installed by fit()
        self.started, self.seen = time.time(), 0  # dialogs trained on since (re)start

    def _build_optimization(self) -> None:
        cfg, dist = self.cfg, self.dist
        self.global_batch, self.scale = global_batch(cfg, dist.world_size, dist.is_master)
        self.optimizer = build_optimizer(
            param_groups(self.model, cfg.train.weight_decay, cfg.train.weight_decay_rule),
            lr=cfg.train.lr * self.scale,
        )
        self.sampler = ResumableSampler(len(self.examples), dist.rank, dist.world_size,
                                        cfg.train.seed, shuffle=True)
        self.rank_step_dialogs = cfg.train.batch_size * cfg.train.grad_accumulation  # per step
        self.steps_per_epoch = max(1, self.sampler.per_rank // self.rank_step_dialogs)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.schedule = selector_schedule(cfg, self.optimizer, self.scale, self.steps_per_epoch,
                                          self.total_steps)

    def settings(self) -> dict[str, object]:
        """What defines this run's data order and optimisation (recorded in every checkpoint;
        a resume with any of them changed is refused): batch sizes, seed, epochs, the
        optimiser and its schedule, the loss switches, the model's shape, the data
        (:func:`open_checkpoints` adds the number of processes)."""
        cfg = self.cfg
        # train.max_steps only stops the run (extending it continues the same run) unless
        # the per-step cosine decays over it: then the total counts.
        train_keys = ("epochs", "batch_size", "global_batch_size", "grad_accumulation", "seed",
                      "lr", "min_lr", "warmup_lr", "lr_schedule", "warmup_epochs",
                      "warmup_step_iterations", "lr_scaling", "weight_decay",
                      "weight_decay_rule", "grad_clip")
        initial_weights_only = ("vision_init", "text_init", "attention")  # not the run's shape
        settings: dict[str, object] = {f"train.{k}": getattr(cfg.train, k) for k in train_keys}
        settings |= {f"loss.{k}": v for k, v in asdict(cfg.loss).items()}
        settings |= {f"model.{k}": v for k, v in asdict(cfg.model).items()
                     if k not in initial_weights_only}
        settings |= {"data.stickerchat": cfg.data.stickerchat, "data.sentiment": cfg.data.sentiment,
                     "data.max_dialogs": cfg.data.max_dialogs,
                     "data.max_text_tokens": cfg.data.max_text_tokens,
                     "emotion.teacher": cfg.emotion.teacher, "emotion.anchors": cfg.emotion.anchors,
                     "eval.protocol": cfg.eval.protocol, "global_batch": self.global_batch,
                     "train_dialogs": len(self.examples)}
        if cfg.train.lr_schedule == "cosine_per_step":
            settings["schedule_steps"] = self.total_steps
        return settings

    def _resume(self) -> None:
        cfg, state = self.cfg, SelectorState()
        self.state = state
        self.checkpoints = open_checkpoints(self.dist, self.outputs.checkpoints, self.settings(),
                                            cfg.train.keep_checkpoints,
                                            cfg.train.on_settings_change)
        resumed = resume(self.checkpoints, state, model=self.model, optimizer=self.optimizer)
        if resumed:
            log.info("resumed from step %d (epoch %d, batch %d)", state.step, state.epoch,
                     state.position)
        self.history = History(self.outputs.history, self.dist.is_master)
        self.dataset = SrsDataset(self.examples, self.cache, train=True,
                                  simclr=cfg.loss.simclr_intra or cfg.loss.simclr_inter,
                                  seed=cfg.train.seed,
                                  on_device=augment_on_device(cfg.train.augment, self.device))
        self.generator = torch.Generator(device=self.device).manual_seed(
            cfg.train.seed * 1000 + self.dist.rank)  # hard-negative draws
        if resumed:  # last: everything built before draws from the seeds, not the saved RNG
            restore_rng(state.rng, self.dist.rank, self.device, self.generator)

    # ------------------------------------------------------------------------- the run

    def fit(self) -> dict:
        """Train to ``train.epochs`` (or ``train.max_steps``); returns the run summary."""
        cfg, state = self.cfg, self.state
        self.started, self.seen = time.time(), 0
        done = bool(cfg.train.max_steps) and state.step >= cfg.train.max_steps
        with self.stop.installed():
            while state.epoch < cfg.train.epochs and not done:
                done = self.train_epoch()
                if not done:
                    state.epoch, state.position = state.epoch + 1, 0
                self.validate()
                self.save()
                barrier()
        return self.summarize()

    def train_epoch(self) -> bool:
        """The (rest of the) current epoch; True when ``train.max_steps`` is reached."""
        cfg, state = self.cfg, self.state
        for micro_batches in optimizer_steps(self.epoch_loader(), cfg.train.grad_accumulation):
            losses, lr = self.train_step(micro_batches)
            if state.step % cfg.train.log_every == 0 or state.step == 1:
                self.log_step(losses, lr)
            if self.selection.due_mid_epoch(state.step) and state.position < self.steps_per_epoch:
                self.validate()
                self.trained.train()
            if self.stop.agreed():
                self.save_and_stop()
            if state.step % cfg.train.checkpoint_every == 0:
                self.save()
            if cfg.train.max_steps and state.step >= cfg.train.max_steps:
                return True
        return False

    def save_and_stop(self) -> None:
        """Checkpoint the step every rank has just finished, then stop (SIGTERM)."""
        self.save()
        barrier()  # no rank exits before the checkpoint is whole
        step = self.state.step
        if self.dist.is_master:
            log.warning("SIGTERM: stopped after step %d with a checkpoint; rerun to resume", step)
        raise Preempted(f"stopped by SIGTERM after step {step}, checkpointed in "
                        f"{self.checkpoints.manager.root}; rerun the same command to resume")

    def epoch_loader(self) -> torch.utils.data.DataLoader:
        """This rank's micro-batches of the current epoch from ``state.position`` on."""
        state = self.state
        self.sampler.set_epoch(state.epoch, skip=state.position * self.rank_step_dialogs)
        self.dataset.set_epoch(state.epoch)
        loader = train_loader(self.dataset, self.sampler, self.tokenize, self.cfg, self.device,
                              state.epoch)
        self.trained.train()
        return loader

    def train_step(self, micro_batches: list[dict]) -> tuple[dict[str, torch.Tensor], float]:
        """One optimizer step over ``train.grad_accumulation`` micro-batches; returns the loss
        terms (their mean over the micro-batches) and the learning rate it used.

        Each micro-batch's loss counts 1/grad_accumulation and DDP all-reduces the summed
        gradients once, after the last micro-batch. The in-batch terms see one micro-batch at a
        time (ITA's image->text softmax, ITM's hard-negative mining, SimCLR inter, the SimCLR
        projector's BatchNorm statistics), so accumulation equals a larger per-process batch
        only for the per-dialog terms (emotion, SimCLR intra, ITA text->image).
        """
        cfg, state = self.cfg, self.state
        self.optimizer.zero_grad(set_to_none=True)
        last = len(micro_batches) - 1
        losses = [self.micro_step(batch, sync=i == last) for i, batch in enumerate(micro_batches)]
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        lr = self.schedule.apply(state.epoch, state.position, state.step)
        self.optimizer.step()
        state.step, state.position = state.step + 1, state.position + 1
        self.seen += self.global_batch
        return mean_losses(losses), lr

    def micro_step(self, batch: dict, sync: bool) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch; DDP all-reduces only when ``sync``."""
        cfg, device = self.cfg, self.device
        plan = batch.get("augment")  # host copy of the augmentation draws: no device sync
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        batch = augment_batch(batch, plan)  # train.augment=device: augment here, batched
        teacher_logits = None
        if self.teacher is not None:
            teacher_logits = emotion_targets(self.teacher, self.anchors, batch["images"])
        with gradient_sync(self.trained, sync):
            with autocast_context(device, cfg.train.precision):
                losses = compute_losses(self.trained, batch, teacher_logits, cfg.loss,
                                        self.generator)
            (losses["loss"] / cfg.train.grad_accumulation).backward()
        return losses

    def log_step(self, losses: dict[str, torch.Tensor], lr: float) -> None:
        state = self.state
        rate = self.seen / max(time.time() - self.started, 1e-9)
        remaining = (self.total_steps - state.step) * self.global_batch
        record = {"step": state.step, "epoch": state.epoch, "lr": lr,
                  "dialogs_per_s": round(rate, 2), "eta_s": round(remaining / rate, 1),
                  **{k: round(v.detach().item(), 5) for k, v in losses.items()}}
        self.history.add(record)
        if self.dist.is_master:
            log.info("step %d/%d epoch %d loss %.4f %.1f dialogs/s eta %.0fs", state.step,
                     self.total_steps, state.epoch, record["loss"], rate, record["eta_s"])

    def validate(self) -> None:
        """Evaluate on the selection split (rank 0 only) and keep ``best.pt``."""
        state, selection = self.state, self.selection
        metrics, state.best_map = keep_best(
            self.dist.is_master, state.best_map, lambda: selection.evaluate(self.model), "MAP",
            self.save_best)
        if metrics is not None:
            self.history.add({"step": state.step, "epoch": state.epoch,
                              selection.history_key: metrics})
            log.info("%s at step %d: MAP %.4f R10@1 %.4f", selection.label, state.step,
                     metrics["MAP"], metrics["R10@1"])
            print(metric_lines(selection.history_key, metrics), flush=True)  # for Katib

    def save_best(self, metrics: dict[str, float]) -> None:
        BestCheckpoint(
            model=self.model.state_dict(), model_config=self.cfg.model,
            vocab=self.tokenize.vocab_text, num_anchor_logits=self.num_anchor_logits,
            lowercase=self.tokenize.lowercase, step=self.state.step, epoch=self.state.epoch,
            selected_on=self.selection.label, val=metrics, sticker_cache=cache_uri(self.cfg),
        ).save(self.outputs.best)

    def save(self) -> None:
        """A checkpoint with every rank's RNG state (a collective: every rank calls it)."""
        self.state.rng = all_gather_objects(rng_state(self.device, self.generator))
        if self.dist.is_master:
            save_checkpoint(self.checkpoints, self.state, self.state.step, model=self.model,
                            optimizer=self.optimizer)
            self.history.flush()

    def summarize(self) -> dict:
        """``train_summary.json`` (written by rank 0); every rank returns its own."""
        cfg, state, dist = self.cfg, self.state, self.dist
        seconds = time.time() - self.started
        summary = {
            "steps": state.step, "epochs": state.epoch, "best_MAP": state.best_map,
            "selected_on": self.selection.label, "protocol": cfg.eval.protocol,
            "train_dialogs": len(self.examples),
            "selection_dialogs": len(self.selection.examples),
            "world_size": dist.world_size, "global_batch": self.global_batch,
            "grad_accumulation": cfg.train.grad_accumulation,
            "augment": "device" if self.dataset.on_device else "loader",
            "lr": cfg.train.lr * self.scale, "lr_scaling": cfg.train.lr_scaling,
            "rank": dist.rank, "seconds": round(seconds, 2),
            "dialogs_per_s": round(self.seen / max(time.time() - self.started, 1e-9), 2),
            "skipped": self.report.as_dict(), "best": self.outputs.best,
        }
        if dist.is_master:
            store.write_text(self.outputs.summary, json.dumps(summary, indent=2))
        barrier()
        return summary
