"""Training data loading: augmented dialogs per second per loader worker; prints JSON.

One process, one thread (as one DataLoader worker), on demo data at each preset's image size:
each dialog is 10 candidates with the train augmentation and, with SimCLR on, two strong views
of each (30 augmented images). Compare with the trainer's dialogs/s per GPU to size
``train.num_workers``: workers needed >= GPU dialogs/s / the rate here.

    python bench/data_loading.py [--dialogs 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from srs_core.config import load_config
from srs_core.data.dataset import SrsDataset
from srs_core.data.examples import load_examples
from srs_core.data.sticker_cache import build_sticker_cache
from srs_core.data.stickerchat import iter_dialogs
from srs_core.data.synth import synthesize


def dialogs_per_s_per_worker(dataset: SrsDataset, dialogs: int | None = None) -> float:
    """Dialogs/s of one loader worker: one thread (as DataLoader's workers), after a warm-up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        count = min(dialogs or len(dataset), len(dataset))
        dataset[0]  # warm-up
        started = time.perf_counter()
        for index in range(count):
            dataset[index]
        return count / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogs", type=int, default=200)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Stickers drawn at 128 px, the paper's input size; the tiny preset resizes to 32.
        synthesize(work / "data", seed=0, dialogs=args.dialogs, sets=30, images=70,
                   image_size=128)
        root = str(work / "data" / "stickerchat")
        sets = {d.sticker_set_id for d in iter_dialogs(root, "train")}
        for preset in ("tiny", "paper"):
            size = load_config(preset=preset).model.image_size
            cache = build_sticker_cache(root, sets, str(work / f"cache-{size}"), size)
            examples = load_examples(root, "train", cache)
            for simclr in (False, True):
                dataset = SrsDataset(examples, cache, train=True, simclr=simclr)
                rate = dialogs_per_s_per_worker(dataset)
                results.append({
                    "preset": preset, "image_size": size, "simclr": simclr,
                    "dialogs": len(dataset), "images_per_dialog": 30 if simclr else 10,
                    "dialogs_per_s_per_worker": round(rate, 2),
                    "ms_per_dialog": round(1000 / rate, 2),
                })
    print(json.dumps({"benchmark": "data_loading", "threads": 1, "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
