"""Training and evaluation throughput of the selector; prints JSON.

For each preset (tiny, paper): training dialogs/s (forward + backward + optimizer step on real
demo batches, every loss term on but the emotion teacher), evaluation dialogs/s with the
per-set sticker encoding, and the same evaluation done naively per dialog (the reference
code's way) in the same run, with the speed-up ratio. On a GPU it also reports fp32 vs bf16
training throughput and model-FLOPs utilisation (MFU) against the GPU's dense bf16 peak.

    python bench/srs_throughput.py [--presets tiny,paper] [--steps 5] [--eval-dialogs 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from srs_core.config import load_config
from srs_core.data.dataset import SrsDataset, make_collate
from srs_core.data.examples import load_examples
from srs_core.data.sticker_cache import build_sticker_cache
from srs_core.data.stickerchat import iter_dialogs
from srs_core.data.synth import synthesize
from srs_core.evaluate import score_examples, score_examples_naive
from srs_core.model import flops_per_dialog
from srs_core.model.factory import build_model
from srs_core.model.losses import compute_losses
from srs_core.model.tokenizer import ContextTokenizer
from srs_core.model.vocab import resolve_vocab
from srs_core.runtime.precision import autocast_context

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_preset(preset: str, data: Path, work: Path, steps: int, eval_dialogs: int,
                 device: torch.device, batch_size: int) -> dict:
    root = str(data / "stickerchat")
    cfg = load_config(preset=preset, overrides=[f"data.stickerchat={root}"])
    sets = {d.sticker_set_id for s in ("train", "test") for d in iter_dialogs(root, s)}
    cache = build_sticker_cache(root, sets, str(work / f"cache-{preset}"), cfg.model.image_size)
    train_examples = load_examples(root, "train", cache)
    test_examples = load_examples(root, "test", cache)[:eval_dialogs]
    tokenize = ContextTokenizer(resolve_vocab(cfg, train_examples), cfg.data.max_text_tokens)
    model = build_model(cfg.model, 7 * cfg.emotion.k, tokenize.vocab_size).to(device)
    cfg.loss.emotion = False
    dataset = SrsDataset(train_examples, cache, train=True, simclr=True)
    collate = make_collate(tokenize)
    batches = [collate([dataset[i * batch_size + j] for j in range(batch_size)])
               for i in range(steps + 1)]
    tokens = int(batches[0]["attention_mask"].sum(1).float().mean())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    result: dict = {"preset": preset, "batch_size": batch_size, "mean_text_tokens": tokens,
                    "parameters": sum(p.numel() for p in model.parameters())}
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    for precision in precisions:
        model.train()
        for i, batch in enumerate(batches):
            if i == 1:  # the first step warms up kernels and allocators
                _sync(device)
                started = time.perf_counter()
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast_context(device, precision):
                loss = compute_losses(model, batch, None, cfg.loss, None)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        rate = steps * batch_size / (time.perf_counter() - started)
        entry = {"train_dialogs_per_s": round(rate, 3)}
        peak = _peak(device)
        if peak:
            flops = flops_per_dialog(cfg.model, tokens, training=True)
            entry["mfu"] = round(rate * flops / peak, 4)
        result[f"train_{precision}"] = entry

    timings = {}
    for name, fn in (("cached", score_examples), ("naive", score_examples_naive)):
        kwargs = {"progress": False} if name == "cached" else {}
        _sync(device)
        started = time.perf_counter()
        fn(model, test_examples, cache, tokenize, device, **kwargs)
        _sync(device)
        timings[name] = time.perf_counter() - started
    result["eval_dialogs"] = len(test_examples)
    # What the cache saves: candidate images a naive loop encodes vs distinct ones (+ padding).
    result["eval_candidate_images"] = sum(len(e.rows) for e in test_examples)
    result["eval_distinct_images"] = len({r for e in test_examples for r in e.rows})
    result["eval_cached_dialogs_per_s"] = round(len(test_examples) / timings["cached"], 3)
    result["eval_naive_dialogs_per_s"] = round(len(test_examples) / timings["naive"], 3)
    result["eval_cache_speedup"] = round(timings["naive"] / timings["cached"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-dialogs", type=int, default=200)
    parser.add_argument("--dialogs", type=int, default=1200,
                        help="demo training dialogs (the test split gets a sixth)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthesize(work / "data", seed=0, dialogs=args.dialogs, sets=30, images=70)
        results = [
            bench_preset(p, work / "data", work, args.steps, args.eval_dialogs, device,
                         args.batch_size)
            for p in args.presets.split(",")
        ]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": device_name, "threads": torch.get_num_threads(),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
