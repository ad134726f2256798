"""How an epoch's dialogs reach the optimizer: this rank's loader of micro-batches, grouped
``train.grad_accumulation`` at a time into optimizer steps."""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator

import torch

from srs_core.config import Config
from srs_core.data.dataset import ResumableSampler, SrsDataset, make_collate
from srs_core.model.tokenizer import ContextTokenizer


def train_loader(dataset: SrsDataset, sampler: ResumableSampler, tokenize: ContextTokenizer,
                 cfg: Config, device: torch.device, epoch: int) -> torch.utils.data.DataLoader:
    """Micro-batches of ``train.batch_size`` dialogs from ``sampler`` (set to the epoch).

    On CUDA the batches come in pinned host memory, so that the ``non_blocking`` copies to the
    GPU overlap the compute.
    """
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
        num_workers=cfg.train.num_workers, collate_fn=make_collate(tokenize),
        pin_memory=device.type == "cuda", persistent_workers=False,
        worker_init_fn=_ignore_sigterm,
        # Its own generator: creating the iterator draws a base seed, and from the global
        # RNG that draw would shift the dropout masks of a resumed run.
        generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + epoch),
    )


def _ignore_sigterm(worker_id: int) -> None:
    """A loader worker outlives a SIGTERM sent to the whole process group (a local launcher,
    a terminal): the training process stops at a step boundary and needs its batches until
    then; the worker ends with it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def optimizer_steps(micro_batches: Iterable[dict], accumulation: int) -> Iterator[list[dict]]:
    """Consecutive groups of ``accumulation`` micro-batches, one group per optimizer step; a
    short group at the end of the epoch is dropped, as the loader drops a short batch."""
    group: list[dict] = []
    for batch in micro_batches:
        group.append(batch)
        if len(group) == accumulation:
            yield group
            group = []


def mean_losses(per_micro_batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Each loss term's mean over one step's micro-batches (detached: for the log)."""
    if len(per_micro_batch) == 1:
        return {key: value.detach() for key, value in per_micro_batch[0].items()}
    return {key: torch.stack([losses[key].detach() for losses in per_micro_batch]).mean()
            for key in per_micro_batch[0]}
