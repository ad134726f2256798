"""SER30K reader: image-level annotations and image files (DESIGN.md section 2).

Layout under a root URI::

    Annotations/image-level/{train,val,test}.json   {"annotations": [{"topic", "file_name",
                                                     "anno": 1..7, "text"}, ...]}
    Images/<topic>/<file_name>                      jpg/png, any mode

Labels are ``anno - 1`` in the class order of :data:`EMOTIONS`, SER30K's seven classes, which
the teacher, the anchors, the emotion loss and the library all use.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from srs_core import store
from srs_core.data import files
from srs_core.data.images import decode_image
from srs_core.data.report import DataProblem, Report
from srs_core.errors import DataError, StoreError, StoreNotFound

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EMOTIONS = ("Surprise", "Happiness", "Disgust", "Fear", "Sadness", "Anger", "Neutral")
# Indices into EMOTIONS by polarity (Neutral is neither), for the emotion-polarity loss.
POSITIVE_EMOTIONS = (0, 1)
NEGATIVE_EMOTIONS = (2, 3, 4, 5)


@dataclass(frozen=True, slots=True)
class Ser30kItem:
    """One annotated sticker image; ``label`` is 0..6, ``index`` its position in the file."""

    topic: str
    file_name: str
    label: int
    text: str
    index: int


def annotations_uri(root: str, split: str) -> str:
    """URI of ``Annotations/image-level/<split>.json``."""
    if split not in SPLITS:
        raise DataError(f"unknown SER30K split {split!r}; expected one of {', '.join(SPLITS)}")
    return store.join(root, "Annotations", "image-level", f"{split}.json")


def image_uri(root: str, item: Ser30kItem) -> str:
    """URI of the item's image; topic/file names that escape ``Images/`` are refused."""
    return store.join(root, "Images", item.topic, item.file_name)


def _parse_item(entry: Any, index: int) -> Ser30kItem:
    """Check one annotation entry; raises DataProblem (where is filled in by the caller)."""
    if not isinstance(entry, dict):
        raise DataProblem("bad_record", "", f"entry is a {type(entry).__name__}, not an object")
    for key in ("topic", "file_name", "anno"):
        if key not in entry:
            raise DataProblem("missing_key", "", f"no {key!r}")
    topic, file_name, anno = entry["topic"], entry["file_name"], entry["anno"]
    if not isinstance(topic, str) or not isinstance(file_name, str) or not topic or not file_name:
        raise DataProblem("bad_record", "", "topic and file_name must be non-empty strings")
    if type(anno) is not int or not 1 <= anno <= len(EMOTIONS):
        raise DataProblem("bad_label", "", f"anno={anno!r}, expected an integer 1..{len(EMOTIONS)}")
    text = entry.get("text") or ""
    return Ser30kItem(topic, file_name, anno - 1, text if isinstance(text, str) else str(text),
                      index)


def read_annotations(
    root: str, split: str, report: Report | None = None, strict: bool = False
) -> list[Ser30kItem]:
    """The split's items in file order; bad entries are skipped and counted in ``report``."""
    uri = annotations_uri(root, split)
    report = Report(strict=strict) if report is None else report
    if strict:
        report.strict = True
    try:
        data = files.read_data(root, uri)
    except StoreNotFound:
        raise DataError(f"{uri}: annotation file not found; is {root!r} a SER30K root?") from None
    except DataProblem as problem:  # a directory, a broken symlink, outside the root
        log.warning("%s", problem)
        report.add_error(problem, skipped=False)
        return []
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        detail = files.describe_encoding(data[:64], exc.start)
        log.warning("%s: %s", uri, detail)
        report.add("not_utf8", uri, detail)
        return []
    except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        report.add("bad_json", uri, str(exc))
        return []
    entries = document.get("annotations") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        report.add("missing_key", uri, "no 'annotations' list at the top level")
        return []
    items = []
    for index, entry in enumerate(entries):
        where = f"{uri}:annotations[{index}]"
        try:
            item = _parse_item(entry, index)
            store.join("Images", item.topic, item.file_name)  # rejects '..' and absolute names
        except DataProblem as problem:
            report.add(problem.problem, where, problem.detail)
            continue
        except StoreError:
            report.add("path_escapes_root", where, f"topic {item.topic!r} / file_name "
                       f"{item.file_name!r} leads out of Images/ ('..' or an absolute path)")
            continue
        items.append(item)
    if not items:
        detail = (f"none of its {len(entries)} annotation(s) is usable" if entries
                  else "its 'annotations' list is empty")
        log.warning("%s: no usable SER30K annotation: %s", uri, detail)
        report.add("empty_input", uri, detail, skipped=False)
    return items


def load_image(root: str, item: Ser30kItem) -> np.ndarray:
    """The item's image as ``[H, W, 3] uint8`` RGB; DataProblem names the file on failure."""
    try:
        uri = image_uri(root, item)
    except StoreError:  # an item built by hand; read_annotations already refuses these
        raise DataProblem("path_escapes_root", f"{root}/Images/{item.topic}/{item.file_name}",
                          f"annotations[{item.index}]: '..' or an absolute path") from None
    try:
        data = files.read_data(root, uri)  # DataProblem: unreadable, or outside the root
    except StoreNotFound:
        raise DataProblem("image_missing", uri, f"annotations[{item.index}]") from None
    return decode_image(data, uri)
