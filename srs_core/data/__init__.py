"""The real data formats: StickerChat dialogs and sticker sets, SER30K, candidates, demo data.

Readers take store URIs (local paths or ``s3://``) and count every skipped item in a
:class:`~srs_core.data.report.Report`; see DESIGN.md section 2 for the formats.
"""

from srs_core.data.candidates import build_candidates
from srs_core.data.report import DataProblem, Report
from srs_core.data.ser30k import Ser30kItem, load_image, read_annotations
from srs_core.data.sticker_sets import iter_candidates, load_sticker, read_sticker_set
from srs_core.data.stickerchat import (
    SPLITS,
    Dialog,
    Utterance,
    dialog_uri,
    iter_dialogs,
    utterance_text,
)

__all__ = [
    "SPLITS", "DataProblem", "Dialog", "Report", "Ser30kItem", "Utterance", "build_candidates",
    "dialog_uri", "iter_candidates", "iter_dialogs", "load_image", "load_sticker",
    "read_annotations", "read_sticker_set", "utterance_text",
]
