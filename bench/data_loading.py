"""Training data loading: augmented dialogs per second per loader worker; prints JSON.

One process, one thread (as one DataLoader worker), on demo data at each preset's image size:
each dialog is 10 candidates with the train augmentation and, with SimCLR on, two strong views
of each (30 augmented images). Compare with the trainer's dialogs/s per GPU to size
``train.num_workers``: workers needed >= GPU dialogs/s / the rate here.

Both places of the augmentations (``train.augment``) are measured: ``loader`` (per image in
the worker, ``dialogs_per_s_per_worker``) and ``device``, where the worker only gathers the
uint8 candidates and draws the parameters (``device_gather_dialogs_per_s``) and the trainer
augments whole batches (``device_batched_dialogs_per_s``: gather and every augmentation of
batches of ``--batch`` dialogs, here on this CPU with one thread, the same work as the
loader path's figure; ``device_vs_loader`` is their ratio). Both paths' workers are timed
making whole batches of ``--batch`` dialogs, the collate that stacks them included: writing a
fresh batch tensor costs the same page faults on either path. The two paths are timed in
turns, ``--rounds`` times, so that a shared machine's drift falls on both: each figure is the
median over the rounds, and the ratio's spread is the per-round ratios'.

    python bench/data_loading.py [--dialogs 200] [--batch 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from srs_core.config import load_config
from srs_core.data.augment import augment_batch
from srs_core.data.dataset import SrsDataset, make_collate
from srs_core.data.examples import load_examples
from srs_core.data.sticker_cache import build_sticker_cache
from srs_core.data.stickerchat import iter_dialogs
from srs_core.data.synth import synthesize
from srs_core.process import keep_freed_memory


def _no_tokens(contexts) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.ones(len(contexts), 1, dtype=torch.long)  # tokenising is the same on both paths
    return ids, ids


COLLATE = make_collate(_no_tokens)


def dialogs_per_s_per_worker(dataset: SrsDataset, dialogs: int | None = None,
                             batch_size: int = 32) -> float:
    """Dialogs/s of one loader worker making batches (items, then the collate that stacks
    them into the trainer's tensors): one thread, as DataLoader's workers, after a warm-up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        count = min(dialogs or len(dataset), len(dataset))
        COLLATE([dataset[0]])  # warm-up
        started = time.perf_counter()
        for start in range(0, count, batch_size):
            COLLATE([dataset[i] for i in range(start, min(start + batch_size, count))])
        return count / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def device_dialogs_per_s(dataset: SrsDataset, dialogs: int | None = None,
                         batch_size: int = 32, device: str | torch.device = "cpu",
                         gather: bool = True) -> float:
    """Dialogs/s of the device path (``dataset`` built with ``on_device=True``): each batch's
    uint8 candidates and draws gathered and collated (left out of the timing unless
    ``gather``), moved to ``device`` and augmented there; one CPU thread, after a warm-up."""
    device = torch.device(device)
    count = min(dialogs or len(dataset), len(dataset))
    starts = range(0, count - batch_size + 1, batch_size) if count >= batch_size else [0]

    def batch(start: int) -> dict:
        collated = COLLATE([dataset[i] for i in range(start, min(start + batch_size, count))])
        return {key: collated[key].to(device) for key in ("images", "augment")}

    def run(ready: dict) -> None:
        augment_batch(ready)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(batch(0))  # warm-up
        ready = None if gather else [batch(start) for start in starts]
        started = time.perf_counter()
        for n, start in enumerate(starts):
            run(batch(start) if gather else ready[n])
        done = sum(min(batch_size, count - start) for start in starts)
        return done / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)


def _one_round(dataset: SrsDataset, on_device: SrsDataset, batch_size: int) -> dict[str, float]:
    """Both paths timed once, one after the other: dialogs/s of the loader path's worker, of
    the device path's worker (gathering only) and of the device path's whole work."""
    return {"loader": dialogs_per_s_per_worker(dataset, batch_size=batch_size),
            "gather": dialogs_per_s_per_worker(on_device, batch_size=batch_size),
            "device": device_dialogs_per_s(on_device, batch_size=batch_size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32, help="dialogs per device batch")
    parser.add_argument("--rounds", type=int, default=3, help="turns of both paths' timings")
    args = parser.parse_args()
    keep_freed_memory()  # as the product's training and evaluation processes do
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
                on_device = SrsDataset(examples, cache, train=True, simclr=simclr,
                                       on_device=True)
                rounds = [_one_round(dataset, on_device, args.batch) for _ in range(args.rounds)]
                rate, gather, batched = (statistics.median(r[k] for r in rounds)
                                         for k in ("loader", "gather", "device"))
                ratios = [r["device"] / r["loader"] for r in rounds]
                results.append({
                    "preset": preset, "image_size": size, "simclr": simclr,
                    "dialogs": len(dataset), "images_per_dialog": 30 if simclr else 10,
                    "dialogs_per_s_per_worker": round(rate, 2),
                    "ms_per_dialog": round(1000 / rate, 2),
                    "device_gather_dialogs_per_s": round(gather, 2),
                    "device_batched_dialogs_per_s": round(batched, 2),
                    "device_ms_per_dialog": round(1000 / batched, 2),
                    "device_vs_loader": round(statistics.median(ratios), 2),
                    "device_vs_loader_per_round": [round(r, 2) for r in ratios],
                })
    print(json.dumps({"benchmark": "data_loading", "threads": 1, "device_batch": args.batch,
                      "rounds": args.rounds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
