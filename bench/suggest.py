"""Whole-library sticker suggestion on demo data; prints JSON.

``--preset tiny`` (default) trains the tiny preset briefly on synthetic StickerChat data,
builds the library index, then measures in one run: (a) index build stickers/s; (b) suggest
latency per dialog (p50/p95) for N = 20/50/100 against the naive alternative, ITM over every
library sticker, with the ratio, and the rerank of N = 50 with its work shared against every
pair through the whole fusion encoder (the previous code), scores compared; (c) the answer
recall kept by reranking only the ITA top-N vs ITM over the whole library; (d) HNSW and IVF
recall@10 against exact search; (e) requests/s and latency of a real ``srs serve``
subprocess on 127.0.0.1 at 1, 4 and 16 concurrent clients.

``--preset paper`` measures the paper's sizes (ViT-B/16 + BERT-base at 128 px, a 21128-token
vocabulary) with random weights, nothing trained: (a), (b) with the image-token cache cold
and warm (and the shared-work rerank against per-pair), the naive whole-library ITM
estimated from ``--sample-stickers`` stickers, and (d).
Recall (c) is left out: a random model's ranks are noise. Serving (e) is left out: at these
sizes on a CPU one request takes seconds.

``--run DIR --stickerchat ROOT`` measures (c) on a pipeline run's trained selector and its
index (``DIR/srs/best.pt``, ``DIR/index``: what ``scripts/demo.sh`` leaves), over the first
``--sample`` test dialogs: the recall kept by reranking only the ITA top-N against ITM over
the whole library, with a model that learned something.

    python bench/suggest.py [--sets 120] [--sample 24] [--requests 48] > bench/results/suggest.json
    python bench/suggest.py --preset paper --sets 25 --latency-dialogs 4 \
        > bench/results/suggest_paper.json
    python bench/suggest.py --run demo/run --stickerchat demo/data/stickerchat --sample 333 \
        > bench/results/suggest_trained.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srs_core.artifacts import RunOutputs
from srs_core.config import ModelConfig, load_config
from srs_core.data.examples import context_texts
from srs_core.data.stickerchat import iter_dialogs
from srs_core.data.synth import synthesize
from srs_core.library import (
    RERANK_NS,
    ImageTokens,
    Searcher,
    Suggester,
    ann_recall,
    build_index,
    itm_scores,
)
from srs_core.model.checkpoint import BestCheckpoint
from srs_core.model.factory import build_model
from srs_core.model.tokenizer import build_vocab
from srs_core.train.loop import train

KS = (1, 5, 10)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def train_tiny(base: Path, steps: int) -> str:
    """The tests' recipe (tests/library_setup.py): a few dozen steps at a flat 1e-3."""
    cfg = load_config(preset="tiny", overrides=[
        f"data.stickerchat={base / 'stickerchat'}", f"train.output={base / 'run'}",
        "train.batch_size=8", "eval.batch_size=16", f"train.max_steps={steps}",
        "loss.emotion=false", "train.log_every=1000", "train.num_workers=0",
        "train.warmup_lr=1e-3", "train.lr=1e-3", "train.warmup_step_iterations=1",
        "loss.simclr_intra=false", "loss.simclr_inter=false",
    ])
    train(cfg)
    return str(base / "run" / "best.pt")


def random_paper_checkpoint(base: Path, contexts: list[tuple[str, ...]]) -> str:
    """A ``best.pt`` of the paper's sizes with random weights (no ALBEF or BERT download):
    the vocabulary is the data's characters, padded to bert-base-chinese's 21128 tokens."""
    model_cfg = ModelConfig()
    path = base / "vocab.txt"
    size = build_vocab((text for context in contexts for text in context), path)
    fillers = [f"[unused{i}]" for i in range(model_cfg.vocab_size - size)]
    vocab = path.read_text(encoding="utf-8") + "".join(f"{t}\n" for t in fillers)
    anchors = 7 * 60  # the paper's K = 60 anchors per emotion
    model = build_model(model_cfg, anchors, model_cfg.vocab_size)
    checkpoint = str(base / "paper" / "best.pt")
    Path(checkpoint).parent.mkdir(parents=True)
    BestCheckpoint(model.state_dict(), model_cfg, vocab, anchors, lowercase=False,
                   selected_on="random init (bench)").save(checkpoint)
    return checkpoint


def warm_token_cache(suggester: Suggester) -> None:
    """Every library sticker's ViT tokens in the LRU: a long-running server's steady state
    when the library fits its ``token_cache``."""
    rows = suggester.index.rows.tolist()
    suggester.images.capacity = max(suggester.images.capacity, len(rows))
    for start in range(0, len(rows), 64):
        suggester.images.get(rows[start:start + 64])


def whole_library_itm_estimate(suggester: Suggester, contexts: list[tuple[str, ...]],
                               sample: int) -> dict[str, Any]:
    """The naive alternative at sizes where it takes minutes: ITM of each dialog with
    ``sample`` stickers (no cache), scaled to the library linearly (text encoded once)."""
    rows = suggester.index.rows.tolist()
    picked = np.random.default_rng(0).choice(len(rows), min(sample, len(rows)), replace=False)
    chosen = [rows[i] for i in sorted(picked.tolist())]
    text_s, per_sticker_s = [], []
    for context in contexts:
        images = ImageTokens(suggester.loaded.model, suggester.cache, suggester.loaded.device)
        started = time.perf_counter()
        tokens, mask, _ = suggester.encode([context])
        encoded = time.perf_counter()
        itm_scores(suggester.loaded.model, tokens, mask, [chosen], images)
        text_s.append(encoded - started)
        per_sticker_s.append((time.perf_counter() - encoded) / len(chosen))
    estimate = [t + p * len(rows) for t, p in zip(text_s, per_sticker_s, strict=True)]
    return {"measured_on_stickers": len(chosen), "dialogs": len(contexts),
            "per_sticker_ms": round(float(np.median(per_sticker_s)) * 1000, 2),
            "estimated_for_library": _percentiles(estimate)}


def suggest_latency(suggester: Suggester, contexts: list[tuple[str, ...]]) -> dict[str, Any]:
    """One dialog per call, as a chat client asks; token cache off so every call encodes N.
    The N values take turns per dialog so that load from other processes hits all alike."""
    times: dict[int, list[float]] = {n: [] for n in RERANK_NS}
    suggester.suggest([contexts[0]], k=5, n=20)  # first call pays lazy init, not counted
    for context in contexts:
        for n in RERANK_NS:
            started = time.perf_counter()
            suggester.suggest([context], k=5, n=n)
            times[n].append(time.perf_counter() - started)
    return {f"N={n}": _percentiles(seconds) for n, seconds in times.items()}


def per_pair_itm_scores(model: torch.nn.Module, text_tokens: torch.Tensor, mask: torch.Tensor,
                        candidates: list[list[int]], images: ImageTokens,
                        pairs_per_batch: int = 256) -> list[np.ndarray]:
    """The rerank before the work was shared (the baseline): every (context, sticker) pair
    through all of ``itm_logits``, ``pairs_per_batch`` at a time."""
    unique = list(dict.fromkeys(r for rows in candidates for r in rows))
    where = {r: i for i, r in enumerate(unique)}
    tokens = images.get(unique)
    context = torch.tensor([b for b, rows in enumerate(candidates) for _ in rows])
    sticker = torch.tensor([where[r] for rows in candidates for r in rows])
    flat = []
    with torch.no_grad():
        for start in range(0, len(context), pairs_per_batch):
            b, i = context[start:start + pairs_per_batch], sticker[start:start + pairs_per_batch]
            flat.append(model.itm_logits(text_tokens[b], mask[b], tokens[i])[:, 1])
    scores = torch.cat(flat).numpy()
    bounds = np.cumsum([0] + [len(rows) for rows in candidates])
    return [scores[bounds[b]:bounds[b + 1]] for b in range(len(candidates))]


def rerank_vs_per_pair(suggester: Suggester, contexts: list[tuple[str, ...]],
                       n: int = 50) -> dict[str, Any]:
    """Reranking each dialog's ITA top-``n`` (tokens cached, one dialog per call): the shared
    work of ``itm_scores`` against the per-pair baseline, timed in turns, scores compared."""
    model, rows = suggester.loaded.model, suggester.index.rows
    shared_s, pair_s, difference = [], [], 0.0
    for context in contexts:
        tokens, mask, features = suggester.encode([context])
        _, positions = suggester.retrieve(features, n)
        chosen = [rows[positions[0]].tolist()]
        suggester.images.get(chosen[0])  # warm: both read cached tokens
        started = time.perf_counter()
        ours = itm_scores(model, tokens, mask, chosen, suggester.images)[0]
        shared_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        baseline = per_pair_itm_scores(model, tokens, mask, chosen, suggester.images)[0]
        pair_s.append(time.perf_counter() - started)
        difference = max(difference, float(np.abs(ours - baseline).max()))
    shared, pair = _percentiles(shared_s), _percentiles(pair_s)
    return {"n": n, "dialogs": len(contexts), "shared_work": shared, "per_pair": pair,
            "speedup_p50": round(pair["p50_ms"] / shared["p50_ms"], 2),
            "max_score_difference": difference}


def whole_library_itm(suggester: Suggester, contexts: list[tuple[str, ...]]
                      ) -> tuple[list[np.ndarray], list[float]]:
    """The naive alternative: ITM of each dialog with every sticker (no index, no cache)."""
    rows = suggester.index.rows.tolist()
    scores, times = [], []
    for context in contexts:
        images = ImageTokens(suggester.loaded.model, suggester.cache, suggester.loaded.device)
        started = time.perf_counter()
        tokens, mask, _ = suggester.encode([context])
        scores.append(itm_scores(suggester.loaded.model, tokens, mask, [rows], images)[0])
        times.append(time.perf_counter() - started)
    return scores, times


def recall_vs_whole_library(suggester: Suggester, contexts: list[tuple[str, ...]],
                            answers: list[int], full_itm: list[np.ndarray]) -> dict[str, Any]:
    """Answer recall@k of full ITM vs rerank@N (answers outside the top-N keep their ITA rank,
    as in srs_core.library.library_metrics), plus how much of full ITM's top-5 survives."""
    _, _, features = suggester.encode(contexts)
    ita = features @ suggester.index.embeddings.T  # [S, M]
    full_ranks = np.array([(s >= s[a]).sum() for s, a in zip(full_itm, answers, strict=True)])
    out: dict[str, Any] = {"whole_library_itm": {f"R@{k}": float(np.mean(full_ranks <= k))
                                                 for k in KS}}
    for n in RERANK_NS:
        ranks, overlap = [], []
        for b, answer in enumerate(answers):
            top = np.argsort(-ita[b], kind="stable")[:n]
            reranked = top[np.argsort(-full_itm[b][top], kind="stable")]
            hit = np.flatnonzero(reranked == answer)
            ranks.append(hit[0] + 1 if len(hit) else max(n + 1, (ita[b] >= ita[b][answer]).sum()))
            best = set(np.argsort(-full_itm[b], kind="stable")[:5].tolist())
            overlap.append(len(best & set(reranked[:5].tolist())) / 5)
        ranks_array = np.asarray(ranks)
        out[f"rerank@{n}"] = {
            **{f"R@{k}": float(np.mean(ranks_array <= k)) for k in KS},
            "top5_overlap_with_whole_library": round(float(np.mean(overlap)), 3),
        }
    return out


def ann_quality(suggester: Suggester, contexts: list[tuple[str, ...]]) -> dict[str, Any]:
    """Recall@10 of the approximate searches against exact inner product, on dialog queries."""
    _, _, queries = suggester.encode(contexts)
    exact = Searcher(suggester.index.embeddings, "flat")
    out = {}
    for kind in ("hnsw", "ivf"):
        started = time.perf_counter()
        approximate = Searcher(suggester.index.embeddings, kind)
        build = time.perf_counter() - started
        out[kind] = {"recall@10": round(ann_recall(exact, approximate, queries, 10), 4),
                     "build_s": round(build, 4)}
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: bytes) -> float:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    return time.perf_counter() - started


def serving(checkpoint: str, index: str, contexts: list[tuple[str, ...]], requests: int,
            log_path: Path) -> dict[str, Any]:
    """A real `srs serve` on loopback; each client sends one-dialog requests back to back."""
    port = _free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "srs_core.cli", "serve", "--checkpoint", checkpoint,
             "--index", index, "--port", str(port), "--host", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    base = f"http://127.0.0.1:{port}/v1/models/srs"
    try:
        deadline = time.time() + 120
        while True:  # it listens only once loaded, so the first 200 means ready
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"srs serve never became ready; see {log_path}")
            try:
                with urllib.request.urlopen(base, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        bodies = [json.dumps({"instances": [{"utterances": list(c), "k": 5, "n": 50}]}).encode()
                  for c in contexts]
        for body in bodies[:4]:  # warm-up, not counted
            _post(f"{base}:predict", body)
        out = {}
        for clients in (1, 4, 16):
            total = max(requests, clients * 4)
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=clients) as pool:
                latencies = list(pool.map(lambda i: _post(f"{base}:predict",
                                                          bodies[i % len(bodies)]),
                                          range(total)))
            wall = time.perf_counter() - started
            out[f"clients={clients}"] = {"requests": total,
                                         "requests_per_s": round(total / wall, 2),
                                         **_percentiles(latencies)}
        return out
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def paper(args: argparse.Namespace) -> dict[str, Any]:
    """The paper-size measurements (random weights); see the module docstring."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        synthesize(str(base), seed=7, dialogs=args.dialogs, sets=args.sets, images=70)
        stickerchat = str(base / "stickerchat")
        dialogs = [d for split in ("test", "val") for d in iter_dialogs(stickerchat, split)]
        contexts = [context_texts(d) for d in dialogs]
        checkpoint = random_paper_checkpoint(base, contexts)
        build = build_index(checkpoint, stickerchat, str(base / "index"), progress=False)
        suggester = Suggester.open(checkpoint, str(base / "index"))
        measured = contexts[:args.latency_dialogs]
        cold = suggest_latency(suggester, measured)
        warm_token_cache(suggester)
        warm = suggest_latency(suggester, measured)
        rerank = rerank_vs_per_pair(suggester, measured)
        naive = whole_library_itm_estimate(suggester, contexts[:args.sample],
                                           args.sample_stickers)
        ann = ann_quality(suggester, contexts)
    estimated = naive["estimated_for_library"]
    return {
        "data": {"preset": "paper", "weights": "random init (nothing trained)",
                 "stickers": build["stickers"], "sets": build["sets"],
                 "latency_dialogs": len(measured),
                 "note": "a small library: encoding StickerChat's whole library at the paper's "
                         "size on 2 CPU cores would take hours"},
        "index_build": {"stickers_per_s": build["stickers_per_s"],
                        "encode_seconds": build["encode_seconds"], "seconds": build["seconds"]},
        "suggest_latency_cold": cold,
        "suggest_latency_warm": warm,
        "rerank_shared_vs_per_pair": rerank,
        "whole_library_itm": naive,
        "latency_ratio_whole_library_over_rerank": {
            key: round(estimated["p50_ms"] / value["p50_ms"], 1) for key, value in cold.items()},
        "recall_vs_whole_library_itm": None,
        "ann_vs_exact": ann,
    }


def trained_run(args: argparse.Namespace) -> dict[str, Any]:
    """Recall kept by reranking only the top-N, on a trained run's selector and index."""
    outputs = RunOutputs(args.run)
    suggester = Suggester.open(outputs.train.best, outputs.index)
    dialogs = [d for d in iter_dialogs(args.stickerchat, "test")
               if suggester.index.position(d.sticker_set_id, d.sticker_id) is not None]
    dialogs = dialogs[:args.sample]
    contexts = [context_texts(d) for d in dialogs]
    answers = [suggester.index.position(d.sticker_set_id, d.sticker_id) for d in dialogs]
    full_itm, times = whole_library_itm(suggester, contexts)
    return {
        "data": {"run": args.run, "stickers": len(suggester.index), "test_dialogs": len(dialogs),
                 "chance": {f"R@{k}": round(k / len(suggester.index), 4) for k in KS}},
        "whole_library_itm_latency": _percentiles(times),
        "recall_vs_whole_library_itm": recall_vs_whole_library(suggester, contexts, answers,
                                                               full_itm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--sets", type=int, default=120, help="sticker sets of the library")
    parser.add_argument("--dialogs", type=int, default=240, help="demo training dialogs")
    parser.add_argument("--steps", type=int, default=90,
                        help="training steps (the tiny preset stops after 3 epochs anyway)")
    parser.add_argument("--latency-dialogs", type=int, default=40)
    parser.add_argument("--sample", type=int, default=24,
                        help="dialogs scored against the whole library with ITM")
    parser.add_argument("--sample-stickers", type=int, default=40,
                        help="paper: stickers the whole-library ITM is timed on, then scaled")
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads here and in the server (1: steady on shared cores)")
    parser.add_argument("--run", default="", help="a pipeline run's output root (trained)")
    parser.add_argument("--stickerchat", default="", help="its StickerChat root (with --run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.run:
        print(json.dumps(trained_run(args), indent=2))
        return
    if args.preset == "paper":
        started, load = time.perf_counter(), os.getloadavg()[0]
        result = {"device": "cpu" if not torch.cuda.is_available()
                  else torch.cuda.get_device_name(), "threads": torch.get_num_threads(),
                  "cpu_cores": os.cpu_count(), **paper(args)}
        # Shared machine: other processes' load slows every figure alike (N values alternate).
        result["load_average_1m"] = {"start": round(load, 1),
                                     "end": round(os.getloadavg()[0], 1)}
        result["bench_seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(result, indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        synthesize(str(base), seed=7, dialogs=args.dialogs, sets=args.sets, images=70)
        stickerchat = str(base / "stickerchat")
        started = time.perf_counter()
        checkpoint = train_tiny(base, args.steps)
        train_seconds = time.perf_counter() - started
        build = build_index(checkpoint, stickerchat, str(base / "index"), progress=False)
        suggester = Suggester.open(checkpoint, str(base / "index"))
        dialogs = [d for split in ("test", "val") for d in iter_dialogs(stickerchat, split)]
        contexts = [context_texts(d) for d in dialogs]
        answers = [suggester.index.position(d.sticker_set_id, d.sticker_id) for d in dialogs]
        latency = suggest_latency(suggester, contexts[:args.latency_dialogs])
        rerank = rerank_vs_per_pair(suggester, contexts[:args.latency_dialogs])
        sample = [i for i, a in enumerate(answers) if a is not None][:args.sample]
        full_itm, naive_times = whole_library_itm(suggester, [contexts[i] for i in sample])
        naive = _percentiles(naive_times)
        recall = recall_vs_whole_library(suggester, [contexts[i] for i in sample],
                                         [answers[i] for i in sample], full_itm)
        ann = ann_quality(suggester, contexts)
        served = serving(checkpoint, str(base / "index"), contexts, args.requests,
                         base / "serve.log")
    result = {
        "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(),
        "data": {"preset": "tiny", "train_steps": args.steps,
                 "train_seconds": round(train_seconds, 1), "stickers": build["stickers"],
                 "sets": build["sets"], "latency_dialogs": min(args.latency_dialogs,
                                                                 len(contexts)),
                 "whole_library_sample": len(sample)},
        "index_build": {"stickers_per_s": build["stickers_per_s"],
                        "encode_seconds": build["encode_seconds"],
                        "seconds": build["seconds"]},
        "suggest_latency": latency,
        "rerank_shared_vs_per_pair": rerank,
        "whole_library_itm_latency": naive,
        "latency_ratio_whole_library_over_rerank": {
            key: round(naive["p50_ms"] / value["p50_ms"], 1) for key, value in latency.items()},
        "recall_vs_whole_library_itm": recall,
        "ann_vs_exact": ann,
        "serving": {"k": 5, "n": 50, "instances_per_request": 1, **served},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
