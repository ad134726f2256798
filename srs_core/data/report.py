"""Counting data problems: how many of each class, and where the first few are.

Readers never skip an item silently: each skip is one :meth:`Report.add` call that names the
problem class (``bad_json``, ``npy_missing``, ...), the location (``file:line`` or an object
key) and a detail. With ``strict=True`` the first problem that is an *error* raises
:class:`DataProblem` instead.

Problem classes are errors unless listed in :data:`WARNINGS`. Warnings describe data that is
usable as it is, e.g. ``small_set``: a sticker set with fewer than 10 stickers is valid in the
evaluation protocol (its candidates are padded with gray images), so it is reported and counted
but never fails strict mode.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from srs_core.errors import DataError

# Usable data that a person may still want to know about; never fatal, never a skip.
WARNINGS = frozenset({"small_set", "blank_line", "duplicate_sticker"})

_HINTS = {
    "bad_json": "fix or drop the line; every line must be one JSON object",
    "line_too_long": "a dialog line is a few KB; a line over srs_core.data.limits.MAX_LINE_BYTES "
                     "is not parsed: fix or drop it",
    "image_too_large": "stickers are at most ~1000 px a side: downscale an image over "
                       "srs_core.data.limits.MAX_IMAGE_SIDE",
    "not_utf8": "re-encode the file as UTF-8",
    "empty_input": "the file yields no usable record: check that it is the right, complete file",
    "unreadable_file": "a directory, a broken symlink or a file without read permission stands "
                       "where a data file should be",
    "path_escapes_root": "data are read only inside their root: copy the files in, or give the "
                         "directory they are in as the root",
    "missing_key": "the record lacks a key the format requires (see DESIGN.md section 2)",
    "bad_id": "ids must be JSON integers (never floats, which lose 64-bit precision)",
    "npy_missing": "the sticker file is absent from npy_stickers/<set>/",
    "npy_corrupt": "re-export the sticker with numpy.save (pickled arrays are refused)",
    "npy_bad_shape": "sticker arrays must be HxW, HxWx3 or HxWx4",
    "npy_bad_values": "sticker arrays must hold uint8, 0..255 integers or 0..1/0..255 floats",
    "unknown_set": "npy_stickers/<set>/emoji_mapping.txt is missing",
    "sticker_not_in_set": "the answer sticker is not listed in its set's emoji_mapping.txt",
    "bad_label": "SER30K 'anno' must be an integer 1..7",
    "image_missing": "the image file is absent under Images/<topic>/",
    "image_corrupt": "the image cannot be decoded",
}


class DataProblem(DataError):
    """A DataError that carries its problem class and location (raised in strict mode)."""

    def __init__(self, problem: str, where: str, detail: str = "") -> None:
        self.problem, self.where, self.detail = problem, where, detail
        hint = _HINTS.get(problem)
        text = f"{where}: {problem}" + (f": {detail}" if detail else "")
        super().__init__(text + (f" ({hint})" if hint else ""))


@dataclass
class Report:
    """Problem counts, the first few locations of each, and how many items were skipped."""

    strict: bool = False
    max_locations: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    skipped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, problem: str, where: str, detail: str = "", skipped: bool | int = True) -> None:
        """Count one problem; ``skipped`` says whether an item was dropped because of it, or how
        many (one problem of a whole file, e.g. ``not_utf8``, drops all of its lines)."""
        if self.strict and problem not in WARNINGS:
            raise DataProblem(problem, where, detail)
        with self._lock:
            self.counts[problem] += 1
            if problem not in WARNINGS:
                self.skipped += int(skipped)
            found = self.examples.setdefault(problem, [])
            if len(found) < self.max_locations:
                found.append((where, detail))

    def add_error(self, error: DataProblem, skipped: bool | int = True) -> None:
        """Count a problem raised by a loader."""
        self.add(error.problem, error.where, error.detail, skipped=skipped)

    @property
    def errors(self) -> int:
        """Problems that make data unusable (everything not in WARNINGS)."""
        return sum(n for name, n in self.counts.items() if name not in WARNINGS)

    @property
    def warnings(self) -> int:
        """Problems in WARNINGS: reported, never fatal."""
        return sum(n for name, n in self.counts.items() if name in WARNINGS)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form: per problem its severity, count and first locations."""
        problems = {
            name: {
                "severity": "warning" if name in WARNINGS else "error",
                "count": self.counts[name],
                "examples": [{"where": w, "detail": d} for w, d in self.examples.get(name, [])],
            }
            for name in sorted(self.counts)
        }
        return {
            "errors": self.errors,
            "warnings": self.warnings,
            "skipped": self.skipped,
            "problems": problems,
        }

    def render(self) -> str:
        """Human-readable summary, one block per problem class."""
        if not self.counts:
            return "no problems found"
        lines = [f"{self.errors} error(s), {self.warnings} warning(s), {self.skipped} skipped"]
        for name in sorted(self.counts, key=lambda n: (n in WARNINGS, n)):
            severity = "warning" if name in WARNINGS else "error"
            lines.append(f"  {name} ({severity}): {self.counts[name]}")
            hint = _HINTS.get(name)
            if hint:
                lines.append(f"      hint: {hint}")
            for where, detail in self.examples.get(name, []):
                lines.append(f"      {where}" + (f": {detail}" if detail else ""))
            more = self.counts[name] - len(self.examples.get(name, []))
            if more > 0:
                lines.append(f"      ... and {more} more")
        return "\n".join(lines)
