"""Candidate construction of the evaluation protocol (DESIGN.md section 2)."""

from __future__ import annotations

from collections.abc import Sequence

from srs_core.data.report import DataProblem

NUM_CANDIDATES = 10  # the answer and nine other stickers of its set, per dialog


def build_candidates(
    sticker_id: int, set_order: Sequence[int], n: int = NUM_CANDIDATES
) -> list[int | None]:
    """Positive first, then the first ``n - 1`` *other* stickers in set order, None-padded.

    ``None`` stands for the gray (127) padding image of sets smaller than ``n``. Unlike the
    authors' code the positive never appears twice, even when it is among the first ``n - 1``
    stickers of its set; duplicate ids in a set's order count once.
    Raises :class:`DataProblem` (``sticker_not_in_set``) when the positive is not in the set.
    """
    if sticker_id not in set_order:
        raise DataProblem(
            "sticker_not_in_set", f"sticker {sticker_id}", f"not among {len(set_order)} stickers"
        )
    candidates: list[int | None] = [sticker_id]
    seen = {sticker_id}
    for other in set_order:
        if len(candidates) == n:
            break
        if other not in seen:
            seen.add(other)
            candidates.append(other)
    candidates.extend([None] * (n - len(candidates)))
    return candidates
