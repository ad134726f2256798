"""StickerChat sticker sets: ``npy_stickers/<set_id>/emoji_mapping.txt`` (the set's order)
and one ``.npy`` image per sticker; candidates are built from the set order (DESIGN.md 2)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import numpy as np

from srs_core.data import files
from srs_core.data.candidates import NUM_CANDIDATES, build_candidates
from srs_core.data.images import decode_npy
from srs_core.data.report import DataProblem, Report
from srs_core.data.stickerchat import Dialog, dialog_uri, iter_dialogs, mapping_uri, sticker_uri
from srs_core.errors import StoreNotFound

log = logging.getLogger(__name__)
_INT_TEXT = re.compile(r"-?[0-9]{1,20}")


def read_sticker_mapping(
    root: str, set_id: int, report: Report | None = None
) -> list[tuple[int, str]]:
    """``(sticker_id, emoji)`` pairs in set order; bad lines raise unless a report counts them."""
    uri = mapping_uri(root, set_id)
    try:
        data = files.read_data(root, uri)  # DataProblem: unreadable, or outside the root
    except StoreNotFound:
        raise DataProblem("unknown_set", uri, f"set {set_id} has no emoji_mapping.txt") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        detail = files.describe_encoding(data[:64], exc.start)
        raise DataProblem("not_utf8", uri, detail) from None
    pairs: list[tuple[int, str]] = []
    seen: set[int] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # trailing blank lines are common and carry nothing
        head, tab, emoji = line.strip().partition("\t")
        if not tab:
            head, _, emoji = head.partition(" ")
        problem = None
        if not _INT_TEXT.fullmatch(head.strip()):
            problem = DataProblem("bad_mapping_line", f"{uri}:{number}", f"{line[:60]!r}")
        elif int(head) in seen:
            problem = DataProblem("duplicate_sticker", f"{uri}:{number}", f"{head} listed twice")
        if problem is not None:
            if report is None and problem.problem == "bad_mapping_line":
                raise problem
            if report is not None:
                report.add_error(problem, skipped=False)
            continue
        seen.add(int(head))
        pairs.append((int(head), emoji.strip()))
    return pairs


def read_sticker_set(root: str, set_id: int) -> list[int]:
    """Sticker ids of a set in ``emoji_mapping.txt`` order (the candidates' order)."""
    return [sticker for sticker, _ in read_sticker_mapping(root, set_id)]


def load_sticker(root: str, set_id: int, sticker_id: int) -> np.ndarray:
    """One sticker image as ``[H, W, 3] uint8``; DataProblem names the file when it fails."""
    uri = sticker_uri(root, set_id, sticker_id)
    try:
        data = files.read_data(root, uri)  # DataProblem: unreadable, or outside the root
    except StoreNotFound:
        raise DataProblem("npy_missing", uri, "sticker file not found") from None
    return decode_npy(data, uri)


class StickerSets:
    """Set orders of one StickerChat root, each read once; unknown or unreadable sets too."""

    def __init__(self, root: str, report: Report | None = None) -> None:
        self.root = root
        self.report = report
        self._orders: dict[int, list[int] | None] = {}
        self._problems: dict[int, DataProblem] = {}

    def order(self, set_id: int) -> list[int] | None:
        """The set's sticker order, or None when the set is missing or unreadable."""
        if set_id not in self._orders:
            try:
                pairs = read_sticker_mapping(self.root, set_id, report=self.report)
                self._orders[set_id] = [sticker for sticker, _ in pairs]
            except DataProblem as problem:
                if self.report is None:
                    raise
                if problem.problem != "unknown_set":
                    self.report.add_error(problem, skipped=False)  # once per set
                self._orders[set_id], self._problems[set_id] = None, problem
        return self._orders[set_id]

    def orders(self) -> dict[int, list[int] | None]:
        """Every set looked up so far (None: missing or unreadable)."""
        return dict(self._orders)

    def candidates(
        self, dialog: Dialog, where: str, report: Report, n: int = NUM_CANDIDATES
    ) -> list[int | None] | None:
        """The dialog's candidates, or None (counted in ``report``) when it must be skipped."""
        set_id = dialog.sticker_set_id
        order = self.order(set_id)
        if order is None:
            problem = self._problems.get(set_id)
            if problem is None or problem.problem == "unknown_set":
                report.add("unknown_set", where, f"set {set_id} not in npy_stickers/")
            else:
                report.add("bad_set", where, f"set {set_id}: {problem.problem} in its mapping")
            return None
        if dialog.sticker_id not in order:
            detail = f"sticker {dialog.sticker_id} not in set {set_id}"
            report.add("sticker_not_in_set", where, detail)
            return None
        return build_candidates(dialog.sticker_id, order, n)


def iter_candidates(
    root: str,
    split: str,
    report: Report | None = None,
    strict: bool = False,
    limit: int = 0,
    n: int = NUM_CANDIDATES,
) -> Iterator[tuple[Dialog, list[int | None]]]:
    """Stream ``(dialog, candidates)``; dialogs whose set or sticker is missing are counted."""
    own_report = report is None
    report = Report(strict=strict) if report is None else report
    sets = StickerSets(root, report)
    uri = dialog_uri(root, split)
    try:
        for dialog in iter_dialogs(root, split, report=report, strict=strict, limit=limit):
            candidates = sets.candidates(dialog, f"{uri}:{dialog.line}", report, n)
            if candidates is not None:
                yield dialog, candidates
    finally:
        if own_report and report.counts:
            log.warning("%s: skipped %d dialog(s): %s", uri, report.skipped, dict(report.counts))
