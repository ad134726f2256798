"""A split's dialogs ready for batching: context texts and the candidates' sticker-cache rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from srs_core.data.candidates import NUM_CANDIDATES
from srs_core.data.report import Report
from srs_core.data.sticker_cache import StickerCache
from srs_core.data.stickerchat import Dialog, Utterance, iter_dialogs, utterance_text
from srs_core.errors import DataError


@dataclass(frozen=True)
class Example:
    """One dialog ready for batching."""

    line: int
    utterances: tuple[str, ...]  # context_texts(): the whitespace rule applied, no empties
    set_id: int
    sticker_id: int
    rows: tuple[int, ...]  # sticker-cache rows of the candidates, positive first
    polarity: tuple[float, float]


def clean_texts(utterances: Iterable[str | Utterance]) -> tuple[str, ...]:
    """The model's text of a context: :func:`utterance_text` of each, empty ones left out."""
    return tuple(text for text in map(utterance_text, utterances) if text)


def context_texts(dialog: Dialog) -> tuple[str, ...]:
    return clean_texts(dialog.context)


def load_examples(
    root: str,
    split: str,
    cache: StickerCache,
    polarity: dict[int, tuple[float, float]] | None = None,
    limit: int = 0,
    report: Report | None = None,
    strict: bool = False,
    protocol: str = "strict",
) -> list[Example]:
    """Read a split and resolve its candidates under ``protocol`` (``strict`` or ``paper``,
    see :meth:`StickerCache.candidate_rows`); unusable dialogs are counted in ``report``."""
    report = report if report is not None else Report(strict=strict)
    examples = []
    for dialog in iter_dialogs(root, split, report=report, strict=strict, limit=limit):
        where = f"release_{split}.json:{dialog.line}"
        if not cache.has_set(dialog.sticker_set_id):
            report.add("set_not_usable", where, f"sticker set {dialog.sticker_set_id}")
            continue
        try:
            rows = cache.candidate_rows(dialog.sticker_set_id, dialog.sticker_id, NUM_CANDIDATES,
                                        protocol)
        except DataError as exc:
            report.add("sticker_not_in_set", where, str(exc))
            continue
        pol = polarity.get(dialog.line, (0.0, 0.0)) if polarity else (0.0, 0.0)
        examples.append(
            Example(dialog.line, context_texts(dialog), dialog.sticker_set_id,
                    dialog.sticker_id, tuple(rows), pol)
        )
    if not examples:
        raise DataError(f"{root} {split}: no usable dialogs ({report.render()})")
    return examples
