"""Does a run's configuration fit its data? Judged from the counts of :mod:`validate`.

A pipeline whose ``anchors_k`` exceeds every SER30K class, or whose batch outgrows the
training split, would otherwise fail hours later in the step that needs it; these checks let
``validate`` (the pipeline's first step, and ``srs data validate``) fail in seconds instead.
Each misfit is one line naming the setting, its value and the data fact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from srs_core.config import Config
from srs_core.data.ser30k import EMOTIONS


def selection_split(cfg: Config) -> str:
    """The StickerChat split that chooses ``best.pt`` (see srs_core.train.selection)."""
    return "test" if cfg.eval.protocol == "paper" else "val"


class _Names:
    """How the caller calls a setting (``{"emotion.k": "anchors_k"}`` for a pipeline
    parameter), so that each line names what the user set."""

    def __init__(self, names: Mapping[str, str] | None) -> None:
        self.names = dict(names or {})

    def __call__(self, key: str) -> str:
        return self.names.get(key, key)

    def setting(self, key: str, value: Any) -> str:
        return f"{self(key)}={value}"


def ser30k_misfits(cfg: Config, ser30k: Mapping[str, Any], names: _Names) -> list[str]:
    """The teacher's and the anchors' needs against the SER30K summary."""
    splits = ser30k["splits"]
    if not splits["train"]["usable"]:
        return []  # validation itself reports an unusable split
    labels = splits["train"]["labels"]
    counts = {name: int(labels.get(name, 0)) for name in EMOTIONS}
    problems = []
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        problems.append(
            f"SER30K train has no usable training image of class {', '.join(empty)}: the "
            "emotion teacher and the anchors need every one of the 7 classes")
    largest = max(counts, key=lambda name: counts[name])
    k = cfg.emotion.k
    if k > counts[largest]:
        problems.append(
            f"{names.setting('emotion.k', k)} exceeds the largest SER30K class ({largest}, "
            f"{counts[largest]} training images): every anchor of every class would repeat "
            f"an image; lower {names('emotion.k')} to at most {counts[largest]}")
    if not splits["val"]["usable"]:
        problems.append("SER30K val has no usable image: the emotion teacher's best epoch "
                        "is chosen on it")
    return problems


def stickerchat_misfits(cfg: Config, stickerchat: Mapping[str, Any], names: _Names,
                        processes: int, eval_split: str | None) -> list[str]:
    """The batch and the splits that training, selection and evaluation need."""
    splits = stickerchat["splits"]
    limit = cfg.data.max_dialogs
    usable = {split: min(c["usable"], limit) if limit else c["usable"]
              for split, c in splits.items()}
    capped = f" (data.max_dialogs={limit})" if limit and limit < splits["train"]["usable"] \
        else ""
    t = cfg.train
    problems = []
    per_step = t.batch_size * t.grad_accumulation
    per_process = -(-usable["train"] // max(1, processes))  # the sampler's ceil
    if usable["train"] and per_process < per_step:
        accumulation = (f" x train.grad_accumulation={t.grad_accumulation}"
                        if t.grad_accumulation > 1 else "")
        spread = f", {per_process} for each of {processes} processes" if processes > 1 else ""
        problems.append(
            f"{names.setting('train.batch_size', t.batch_size)}{accumulation} needs {per_step} "
            f"training dialogs per process for one optimizer step, but StickerChat train "
            f"has {usable['train']} usable training dialogs{capped}{spread}: no step would "
            "be taken; lower the batch or the number of processes")
    if not any(usable.values()):
        return problems  # validation itself reports data without a usable dialog
    needed = {"train": "training learns from it",
              selection_split(cfg): f"it chooses best.pt (eval.protocol={cfg.eval.protocol})"}
    if eval_split:
        evaluated = f"{names.setting('eval_split', eval_split)} evaluates it"
        needed[eval_split] = "; ".join(filter(None, [needed.get(eval_split, ""), evaluated]))
    for split, why in needed.items():
        if not usable.get(split):
            problems.append(f"StickerChat {split} has no usable dialog: {why}")
    return problems


def check_data_parameters(
    cfg: Config,
    stickerchat: Mapping[str, Any] | None = None,
    ser30k: Mapping[str, Any] | None = None,
    *,
    processes: int = 1,
    eval_split: str | None = None,
    names: Mapping[str, str] | None = None,
) -> list[str]:
    """The run's data-dependent settings against what validation counted; one line per misfit.

    ``stickerchat`` / ``ser30k``: the summaries of :mod:`srs_core.data.validate` (``None``: that
    root was not checked). ``processes``: training processes (the batch is per process).
    ``eval_split``: the split the run evaluates (``None``: none). ``names``: see :class:`_Names`.
    """
    naming = _Names(names)
    problems: list[str] = []
    if ser30k is not None:
        problems += ser30k_misfits(cfg, ser30k, naming)
    if stickerchat is not None:
        problems += stickerchat_misfits(cfg, stickerchat, naming, processes, eval_split)
    return problems
