"""KFP v2 components of the SRS workflow: thin wrappers, one `srs_core` call each.

Each component runs in an image built from `images/` (constants in :mod:`components._image`);
its body imports what it needs because KFP ships only the function's source to the container.
"""

from components.anchors import cluster_anchors
from components.evaluate import evaluate
from components.library import build_index, deploy_model, no_index
from components.sentiment import prepare_sentiment
from components.study import compare_variants, study_variant
from components.teacher import train_emotion_teacher
from components.train import train_srs
from components.validate import validate

__all__ = [
    "build_index", "cluster_anchors", "compare_variants", "deploy_model", "evaluate", "no_index",
    "prepare_sentiment", "study_variant", "train_emotion_teacher", "train_srs", "validate",
]
