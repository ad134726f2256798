"""Training and evaluation throughput of the selector; prints JSON.

For each preset (tiny, paper): training dialogs/s (forward + backward + optimizer step on real
demo batches, every loss term on but the emotion teacher), and evaluation dialogs/s of three
loops on the same dialogs in the same run: ours (each sticker encoded once with its
cross-attention keys/values, contexts sorted by length, fixed-size batches), the authors'
``train.py:eval()`` restated on our model (batches of 4 dialogs, every candidate re-encoded)
and a naive per-dialog loop, with our speed-up over each and the largest score difference.
Evaluation runs on the demo test split (paper protocol) and on splits where every sticker set
answers ``--dialogs-per-set`` dialogs (sharing sets, and so stickers, as a real test split
does). On a GPU it also reports fp32 vs bf16
training throughput and model-FLOPs utilisation (MFU) against the GPU's dense bf16 peak.

    python bench/srs_throughput.py [--presets tiny,paper] [--steps 5] [--eval-dialogs 200]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from srs_core.config import Config, load_config
from srs_core.data.dataset import SrsDataset, make_collate
from srs_core.data.examples import Example, load_examples
from srs_core.data.sticker_cache import StickerCache, build_sticker_cache
from srs_core.data.stickerchat import iter_dialogs
from srs_core.data.synth import synthesize
from srs_core.evaluate import Scores, score_examples, score_examples_naive, sticker_pixels
from srs_core.model import flops_per_dialog
from srs_core.model.factory import build_model
from srs_core.model.losses import compute_losses
from srs_core.model.tokenizer import ContextTokenizer
from srs_core.model.vocab import resolve_vocab
from srs_core.process import keep_freed_memory
from srs_core.runtime.precision import autocast_context

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_bf16(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, None off-GPU or for an unlisted GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Bench:
    """A preset's model and demo data, ready to time."""

    cfg: Config
    cache: StickerCache
    train_examples: list
    test_examples: list
    tokenize: ContextTokenizer
    dataset: SrsDataset  # train augmentation with the SimCLR views
    collate: Callable


def prepare(preset: str, data: Path, work: Path, eval_dialogs: int) -> Bench:
    """Sticker cache, examples and tokenizer of the demo data under ``data`` at ``preset``."""
    root = str(data / "stickerchat")
    cfg = load_config(preset=preset, overrides=[f"data.stickerchat={root}"])
    cfg.loss.emotion = False  # distillation needs a trained teacher: every other term is on
    sets = {d.sticker_set_id for s in ("train", "test") for d in iter_dialogs(root, s)}
    cache = build_sticker_cache(root, sets, str(work / f"cache-{preset}"), cfg.model.image_size)
    train_examples = load_examples(root, "train", cache)
    test_examples = load_examples(root, "test", cache)[:eval_dialogs]
    tokenize = ContextTokenizer(resolve_vocab(cfg, train_examples), cfg.data.max_text_tokens)
    dataset = SrsDataset(train_examples, cache, train=True, simclr=True)
    return Bench(cfg, cache, train_examples, test_examples, tokenize, dataset,
                 make_collate(tokenize))


def new_model(bench: Bench, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised selector of the bench's preset on ``device``."""
    torch.manual_seed(seed)
    return build_model(bench.cfg.model, 7 * bench.cfg.emotion.k,
                       bench.tokenize.vocab_size).to(device)


def make_batches(bench: Bench, batch_size: int, count: int, items: list | None = None) -> list:
    """``count`` collated batches; dialogs are taken in turn from ``items`` (default: the
    first ``batch_size * count`` of the training split), repeating when they run out."""
    items = items or [bench.dataset[i] for i in range(batch_size * count)]
    return [bench.collate([items[(i * batch_size + j) % len(items)] for j in range(batch_size)])
            for i in range(count)]


def mean_text_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum(1).float().mean())


def train_rate(model: torch.nn.Module, bench: Bench, optimizer: torch.optim.Optimizer,
               batches: list, device: torch.device, precision: str,
               min_seconds: float = 0.0) -> float:
    """Training dialogs/s: forward, backward and optimizer step on ``batches``.

    The first batch warms up kernels and allocators, untimed; the others are timed once each,
    then again in turn until ``min_seconds`` have passed.
    """
    def step(batch: dict) -> None:
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_context(device, precision):
            loss = compute_losses(model, batch, None, bench.cfg.loss, None)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    step(batches[0])
    sync(device)
    started, timed = time.perf_counter(), 0
    while timed < len(batches) - 1 or time.perf_counter() - started < min_seconds:
        step(batches[1 + timed % (len(batches) - 1)])
        timed += 1
    sync(device)
    return timed * len(batches[0]["index"]) / (time.perf_counter() - started)


def train_mfu(cfg: Config, rate: float, tokens: int, device: torch.device) -> float | None:
    """Model-FLOPs utilisation of ``rate`` training dialogs/s (FLOPs counted per dialog)."""
    peak = peak_bf16(device)
    if peak is None:
        return None
    return round(rate * flops_per_dialog(cfg.model, tokens, training=True) / peak, 4)


def score_authors_style(model: torch.nn.Module, examples: list, cache: StickerCache,
                        tokenize: ContextTokenizer, device: torch.device,
                        batch_size: int = 4) -> Scores:
    """The authors' ``train.py:eval()`` restated on our model: batches of ``batch_size`` dialogs
    (``batch_size_test: 4``), contexts padded to the longest of the batch, all ``B*10``
    candidate images encoded (a sticker again for every dialog that ranks it, the positive
    twice when the paper protocol lists it twice), the context repeated per candidate through
    every fusion layer. Images come from our sticker cache, so their loader is not timed."""
    model.eval()
    itm, ita = [], []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            b, c = len(batch), len(batch[0].rows)
            rows = [r for example in batch for r in example.rows]
            image_tokens, image_feat = model.encode_image(sticker_pixels(cache, rows, device))
            ids, mask = (t.to(device) for t in tokenize([e.utterances for e in batch]))
            text_tokens, text_feat = model.encode_text(ids, mask)
            ita.append(torch.einsum("be,bce->bc", text_feat, image_feat.view(b, c, -1)))
            logits = model.itm_logits(text_tokens.repeat_interleave(c, dim=0),
                                      mask.repeat_interleave(c, dim=0), image_tokens)
            itm.append(logits[:, 1].view(b, c))
    return Scores(torch.cat(itm).float().cpu().numpy(), torch.cat(ita).float().cpu().numpy())


LOOPS = ("ours", "authors", "naive")


def eval_seconds(model: torch.nn.Module, bench: Bench, device: torch.device,
                 loop: str = "ours", examples: list | None = None) -> tuple[Scores, float]:
    """Scores of ``examples`` (default: the bench's test dialogs) and the seconds they took,
    with our evaluation (``ours``), the authors' loop (``authors``) or naively per dialog."""
    examples = bench.test_examples if examples is None else examples
    sync(device)
    started = time.perf_counter()
    if loop == "naive":
        scores = score_examples_naive(model, examples, bench.cache, bench.tokenize, device)
    elif loop == "authors":
        scores = score_authors_style(model, examples, bench.cache, bench.tokenize, device)
    else:
        scores = score_examples(model, examples, bench.cache, bench.tokenize, device,
                                batch_size=bench.cfg.eval.batch_size, progress=False)
    sync(device)
    return scores, time.perf_counter() - started


def shared_split(bench: Bench, dialogs_per_set: int, sets: int = 0, seed: int = 0) -> list:
    """A test split where every sticker set of the cache answers ``dialogs_per_set`` dialogs
    (answers drawn uniformly from the set, paper-protocol candidates, contexts taken in turn
    from the demo test split; ``sets`` > 0 takes only that many sets): how much dialogs share
    sets, and so stickers, set apart."""
    rng = random.Random(seed)
    texts = [example.utterances for example in bench.test_examples]
    examples = []
    chosen = list(bench.cache.sets.items())[:sets or None]
    for set_id, stickers in chosen:
        for _ in range(dialogs_per_set):
            sticker = rng.choice(stickers)
            rows = bench.cache.candidate_rows(set_id, sticker, protocol="paper")
            examples.append(Example(len(examples), texts[len(examples) % len(texts)], set_id,
                                    sticker, tuple(rows), (0.0, 0.0)))
    return examples


def compare_evaluation(model: torch.nn.Module, bench: Bench, examples: list,
                       device: torch.device, loops: tuple[str, ...] = LOOPS) -> dict:
    """Seconds of each evaluation loop on the same dialogs, ours' speed-up over each, and the
    largest score difference from ours (the loops must agree)."""
    for loop in loops:  # warm-up: kernels, allocators, the first tokenizer calls
        eval_seconds(model, bench, device, loop, examples[:8])
    runs = {loop: eval_seconds(model, bench, device, loop, examples) for loop in loops}
    ours, seconds = runs["ours"][0], runs["ours"][1]
    sets = {e.set_id for e in examples}
    tokens = [len(bench.tokenize([e.utterances])[0][0]) for e in examples]
    result = {
        "dialogs": len(examples), "sets": len(sets),
        "dialogs_per_set": round(len(examples) / len(sets), 2),
        "candidate_images": sum(len(e.rows) for e in examples),
        "distinct_images": len({r for e in examples for r in e.rows}),
        "mean_text_tokens": round(sum(tokens) / len(tokens), 1),
    }
    for loop, (scores, spent) in runs.items():
        result[f"{loop}_dialogs_per_s"] = round(len(examples) / spent, 3)
        if loop != "ours":
            result[f"speedup_vs_{loop}"] = round(spent / seconds, 2)
            result[f"max_itm_diff_vs_{loop}"] = float(abs(scores.itm - ours.itm).max())
            result[f"max_ita_diff_vs_{loop}"] = float(abs(scores.ita - ours.ita).max())
    return result


def bench_preset(preset: str, data: Path, work: Path, steps: int, eval_dialogs: int,
                 device: torch.device, batch_size: int,
                 dialogs_per_set: tuple[int, ...] = (), shared_sets: int = 0) -> dict:
    bench = prepare(preset, data, work, eval_dialogs)
    model = new_model(bench, device)
    batches = make_batches(bench, batch_size, steps + 1)
    tokens = mean_text_tokens(batches[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    result: dict = {"preset": preset, "batch_size": batch_size, "mean_text_tokens": tokens,
                    "parameters": sum(p.numel() for p in model.parameters())}
    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    for precision in precisions:
        rate = train_rate(model, bench, optimizer, batches, device, precision)
        entry = {"train_dialogs_per_s": round(rate, 3)}
        mfu = train_mfu(bench.cfg, rate, tokens, device)
        if mfu is not None:
            entry["mfu"] = mfu
        result[f"train_{precision}"] = entry

    paper_test = load_examples(str(data / "stickerchat"), "test", bench.cache,
                               protocol="paper")[:eval_dialogs]
    result["eval"] = {"demo_test_paper_protocol": compare_evaluation(model, bench, paper_test,
                                                                     device)}
    for per_set in dialogs_per_set:
        result["eval"][f"shared_{per_set}_per_set"] = compare_evaluation(
            model, bench, shared_split(bench, per_set, shared_sets), device, ("ours", "authors"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-dialogs", type=int, default=200)
    parser.add_argument("--dialogs-per-set", default="3,10",
                        help="shared-set test splits to compare evaluation loops on")
    parser.add_argument("--shared-sets", type=int, default=0,
                        help="sticker sets in each shared-set split (0 = all 30)")
    parser.add_argument("--dialogs", type=int, default=1200,
                        help="demo training dialogs (the test split gets a sixth)")
    args = parser.parse_args()
    keep_freed_memory()  # as the product's training and evaluation processes do
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthesize(work / "data", seed=0, dialogs=args.dialogs, sets=30, images=70)
        per_set = tuple(int(n) for n in args.dialogs_per_set.split(",") if n)
        results = [
            bench_preset(p, work / "data", work, args.steps, args.eval_dialogs, device,
                         args.batch_size, per_set, args.shared_sets)
            for p in args.presets.split(",")
        ]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": device_name, "threads": torch.get_num_threads(),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
