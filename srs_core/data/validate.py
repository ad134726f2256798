"""Validation of a StickerChat and a SER30K root: every problem counted, located, reported.

StickerChat: each release file's lines (UTF-8, JSON, keys, integer ids, non-empty context; a
file that is not UTF-8 at all is one ``not_utf8`` problem, one without a usable dialog
``empty_input``),
each dialog's set (``unknown_set``) and sticker (``sticker_not_in_set``), each referenced set's
``emoji_mapping.txt`` (``small_set`` is a warning, ``empty_set`` an error), and every sticker
file of those sets, loaded once each however many dialogs share it (``npy_missing``,
``npy_corrupt``, ``npy_bad_shape``, ``npy_bad_values``). A dialog is *usable* when its answer and
its other candidates all load.
SER30K: each annotation file (JSON, keys, ``bad_label``, ``empty_input``) and every image
(``image_missing``, ``image_corrupt``).
Any file may also be ``unreadable_file`` (a directory, a broken symlink, no read permission) or,
under a local root, ``path_escapes_root`` (it resolves outside the root): one problem of that
file, and validation goes on.

Validation always reads everything, so a report lists all problems; ``strict`` only decides
the exit code (non-zero on any error). With no usable dialog or image the code is non-zero
either way.

Given a run's configuration, :meth:`ValidationResult.check_run` also judges its data-dependent
settings against these counts (anchors per class against the SER30K classes, the batch against
the usable training dialogs, the splits later steps need): ``parameters`` lists each misfit,
and the exit code is then 2 (a configuration error) when the data itself is usable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

from tqdm import tqdm

from srs_core.data import files, ser30k, sticker_sets, stickerchat
from srs_core.data.candidates import build_candidates
from srs_core.data.report import DataProblem, Report
from srs_core.data.ser30k import EMOTIONS
from srs_core.errors import DataError

T = TypeVar("T")
_BATCH = 2048  # work items in flight at once: bounded memory for 170k stickers


def _parallel(
    check: Callable[[T], Any], items: Iterable[T], workers: int
) -> Iterator[tuple[T, Any]]:
    """``(item, check(item))`` in order, ``workers`` at a time (I/O-bound store reads)."""
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while batch := list(islice(iterator, _BATCH)):
            yield from zip(batch, pool.map(check, batch), strict=True)


@dataclass
class ValidationResult:
    """What was checked and found; ``exit_code`` applies the strict/usable rules."""

    report: Report
    stickerchat: dict[str, Any] | None = None
    ser30k: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)
    parameters: list[str] = field(default_factory=list)  # run settings that misfit the data

    @property
    def usable(self) -> bool:
        """At least one dialog (and, if checked, one SER30K image) can be used."""
        return not self.reasons

    def exit_code(self, strict: bool) -> int:
        """1 when nothing usable remains, or in strict mode on any error; else 2 when a run
        setting misfits the data (:meth:`check_run`); else 0."""
        if not self.usable or (strict and self.report.errors):
            return 1
        return 2 if self.parameters else 0

    def check_run(self, cfg: Any, processes: int = 1, eval_split: str | None = None,
                  names: dict[str, str] | None = None) -> list[str]:
        """Judge a run's data-dependent settings against the counts (see
        :func:`srs_core.data.fit.check_data_parameters`); returns and keeps the misfits."""
        from srs_core.data.fit import check_data_parameters

        self.parameters = check_data_parameters(
            cfg, self.stickerchat, self.ser30k, processes=processes, eval_split=eval_split,
            names=names)
        return self.parameters

    def as_dict(self, strict: bool = False) -> dict[str, Any]:
        """JSON-ready summary and report."""
        return {
            "ok": self.exit_code(strict) == 0,
            "strict": strict,
            "unusable": self.reasons,
            "parameters": self.parameters,
            "stickerchat": self.stickerchat,
            "ser30k": self.ser30k,
            "report": self.report.as_dict(),
        }

    def render(self, strict: bool = False) -> str:
        """Human-readable summary and report."""
        lines = []
        if self.stickerchat is not None:
            sc = self.stickerchat
            lines.append(f"StickerChat {sc['root']}")
            for split, counts in sc["splits"].items():
                lines.append(f"  {split}: {counts['dialogs']} dialogs read, {counts['usable']} "
                             f"usable, {counts['bad_candidates']} with a bad candidate sticker")
            lines.append(f"  sets: {sc['sets']['referenced']} referenced, "
                         f"{sc['sets']['unknown']} unknown, {sc['sets']['small']} smaller than 10")
            lines.append(f"  stickers: {sc['stickers']['checked']} checked, "
                         f"{sc['stickers']['bad']} bad; sizes {sc['stickers']['sizes']}")
        if self.ser30k is not None:
            lines.append(f"SER30K {self.ser30k['root']}")
            for split, counts in self.ser30k["splits"].items():
                lines.append(f"  {split}: {counts['items']} annotations, {counts['usable']} "
                             f"usable; labels {counts['labels']}")
        lines.append(self.report.render())
        lines.extend(f"NOT USABLE: {reason}" for reason in self.reasons)
        lines.extend(f"PARAMETER: {problem}" for problem in self.parameters)
        lines.append("result: " + ("OK" if self.exit_code(strict) == 0 else "FAILED")
                     + (" (strict)" if strict else ""))
        return "\n".join(lines)


def _check_sticker(root: str) -> Callable[[tuple[int, int]], DataProblem | str]:
    def check(key: tuple[int, int]) -> DataProblem | str:
        try:
            pixels = sticker_sets.load_sticker(root, *key)
        except DataProblem as problem:
            return problem
        return f"{pixels.shape[0]}x{pixels.shape[1]}"

    return check


def _check_set_sizes(root: str, known: dict[int, list[int]], report: Report) -> None:
    """Empty sets are problems; sets under 10 stickers are noted (gray padding)."""
    for set_id, order in known.items():
        where = stickerchat.mapping_uri(root, set_id)
        if not order:
            report.add("empty_set", where, "emoji_mapping.txt lists no stickers")
        elif len(order) < 10:
            report.add("small_set", where, f"{len(order)} stickers: candidates padded with gray",
                       skipped=False)



def validate_stickerchat(
    root: str, report: Report, workers: int = 8, progress: bool = True
) -> dict[str, Any]:
    """Check the three release files, the referenced sets and their sticker files."""
    sets = sticker_sets.StickerSets(root, report)
    answers: dict[str, Counter] = {}
    parsed: dict[str, int] = {}
    for split in stickerchat.SPLITS:
        uri = stickerchat.dialog_uri(root, split)
        answers[split], parsed[split] = Counter(), 0
        if not files.present(uri):
            report.add("missing_file", uri, f"no release_{split}.json")
            continue
        dialogs = stickerchat.iter_dialogs(root, split, report=report)
        for dialog in tqdm(dialogs, desc=f"dialogs {split}", unit=" dialogs",
                           disable=None if progress else True):
            parsed[split] += 1
            candidates = sets.candidates(dialog, f"{uri}:{dialog.line}", report)
            if candidates is not None:
                answers[split][(dialog.sticker_set_id, dialog.sticker_id)] += 1

    known = {set_id: order for set_id, order in sets.orders().items() if order is not None}
    _check_set_sizes(root, known, report)
    keys = [(set_id, sticker) for set_id, order in known.items() for sticker in order]
    bad: set[tuple[int, int]] = set()
    sizes: Counter = Counter()
    results = _parallel(_check_sticker(root), keys, workers)
    for key, outcome in tqdm(results, total=len(keys), desc="stickers", unit=" stickers",
                             disable=None if progress else True):
        if isinstance(outcome, DataProblem):
            report.add_error(outcome)
            bad.add(key)
        else:
            sizes[outcome] += 1

    splits = {}
    for split in stickerchat.SPLITS:
        usable = broken = 0
        for (set_id, sticker), count in answers[split].items():
            candidates = build_candidates(sticker, known[set_id])
            if any((set_id, c) in bad for c in candidates if c is not None):
                broken += count  # already reported once, as the sticker file's problem
            else:
                usable += count
        splits[split] = {"dialogs": parsed[split], "usable": usable, "bad_candidates": broken}
    return {
        "root": root,
        "splits": splits,
        "sets": {
            "referenced": len(sets.orders()),
            "unknown": len(sets.orders()) - len(known),
            "small": sum(1 for order in known.values() if 0 < len(order) < 10),
        },
        "stickers": {"checked": len(keys), "bad": len(bad), "sizes": dict(sizes.most_common(5))},
    }


def _check_image(root: str) -> Callable[[ser30k.Ser30kItem], DataProblem | None]:
    def check(item: ser30k.Ser30kItem) -> DataProblem | None:
        try:
            ser30k.load_image(root, item)
        except DataProblem as problem:
            return problem
        return None

    return check


def validate_ser30k(
    root: str, report: Report, workers: int = 8, progress: bool = True
) -> dict[str, Any]:
    """Check the three annotation files and every image they name."""
    splits = {}
    for split in ser30k.SPLITS:
        uri = ser30k.annotations_uri(root, split)
        try:
            items = ser30k.read_annotations(root, split, report=report)
        except DataError:
            report.add("missing_file", uri, f"no {split}.json")
            items = []
        usable, labels = 0, Counter()
        results = _parallel(_check_image(root), items, workers)
        for item, problem in tqdm(results, total=len(items), desc=f"SER30K {split}",
                                  unit=" images", disable=None if progress else True):
            if problem is None:
                usable += 1
                labels[item.label] += 1
            else:
                report.add_error(problem)
        splits[split] = {"items": len(items), "usable": usable,
                         "labels": {EMOTIONS[label]: labels[label] for label in sorted(labels)}}
    return {"root": root, "splits": splits}


def validate(
    stickerchat_root: str | None = None,
    ser30k_root: str | None = None,
    workers: int = 8,
    progress: bool = True,
) -> ValidationResult:
    """Validate whichever roots are given; see the module docstring for what is checked."""
    if not stickerchat_root and not ser30k_root:
        raise DataError("nothing to validate: give a StickerChat root, a SER30K root or both")
    result = ValidationResult(report=Report())
    if stickerchat_root:
        result.stickerchat = validate_stickerchat(stickerchat_root, result.report, workers,
                                                  progress)
        if not any(s["usable"] for s in result.stickerchat["splits"].values()):
            result.reasons.append(f"no usable dialog in {stickerchat_root}")
    if ser30k_root:
        result.ser30k = validate_ser30k(ser30k_root, result.report, workers, progress)
        if not any(s["usable"] for s in result.ser30k["splits"].values()):
            result.reasons.append(f"no usable SER30K image in {ser30k_root}")
    return result
