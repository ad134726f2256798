"""Ingest/validate: check both raw data roots before anything expensive reads them."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Markdown, Metrics, Output

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate(
    stickerchat: str,
    ser30k: str,
    strict: bool,
    report: Output[Markdown],
    counts: Output[Metrics],
) -> NamedTuple("Validated", stickerchat=str, ser30k=str):
    """Validate the StickerChat and SER30K roots; fail the step when the data is unusable.

    The roots are passed through unchanged so that every later step depends on this one: the
    data is read in place from the object store (no copy), after it has been checked.
    """
    from collections import namedtuple
    from pathlib import Path

    from srs_core.data.validate import validate as validate_roots
    from srs_core.errors import DataError

    result = validate_roots(stickerchat, ser30k, progress=False)
    text = result.render(strict)
    Path(report.path).write_text(f"# Data validation\n\n```\n{text}\n```\n", encoding="utf-8")
    for problem, count in sorted(result.report.counts.items()):
        counts.log_metric(f"problem_{problem}", count)
    for split, split_counts in result.stickerchat["splits"].items():
        counts.log_metric(f"usable_dialogs_{split}", split_counts["usable"])
    for split, split_counts in result.ser30k["splits"].items():
        counts.log_metric(f"usable_images_{split}", split_counts["usable"])
    if result.exit_code(strict):
        raise DataError(f"data validation failed{' (strict)' if strict else ''}:\n{text}")
    return namedtuple("Validated", "stickerchat ser30k")(stickerchat, ser30k)
