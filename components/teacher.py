"""Train the emotion teacher (timm ResNet50 on SER30K); confusion matrix for the UI."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Metrics, Output

from components._image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_emotion_teacher(
    ser30k: str,
    output_root: str,
    preset: str,
    overrides: str,
    confusion: Output[ClassificationMetrics],
    scores: Output[Metrics],
) -> NamedTuple("Teacher", teacher=str, output=str):
    """Train the 7-class teacher; log the test confusion matrix and val/test accuracy, F1.

    Returns the teacher weights' URI (``teacher.pth``) and the step's output URI.
    """
    import shlex
    from collections import namedtuple

    from srs_core.artifacts import RunOutputs
    from srs_core.config import load_config
    from srs_core.data.ser30k import EMOTIONS
    from srs_core.emotion.teacher import train_teacher

    cfg = load_config([], [*shlex.split(overrides), f"emotion.ser30k={ser30k}"], preset=preset)
    outputs = RunOutputs(output_root).teacher
    results = train_teacher(cfg, outputs.root, init_uri=cfg.emotion.init)
    confusion.log_confusion_matrix(list(EMOTIONS), results["test"]["confusion"])
    for split in ("val", "test"):
        scores.log_metric(f"{split}_accuracy", float(results[split]["accuracy"]))
        scores.log_metric(f"{split}_macro_f1", float(results[split]["macro_f1"]))
    return namedtuple("Teacher", "teacher output")(outputs.weights, outputs.root)
