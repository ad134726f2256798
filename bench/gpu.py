"""Every throughput figure a GPU decides, in one run; prints one JSON document.

Sections (each guarded: an error in one is recorded as ``{"error": ...}`` and the others run;
one that the time budget leaves no room for says ``{"skipped": ...}``):

    train           SRS training dialogs/s in fp32 and bf16 at batch 4 (the paper's) and at
                    the largest batch that fits (doubling from 4 until out of memory, bounded),
                    MFU against the GPU's dense bf16 peak (FLOPs counted per dialog)
    input_pipeline  dialogs/s of one loader worker on each augmentation path (loader: it
                    augments; device: it gathers and the GPU augments, also timed) vs the GPU's
                    training step rate
    evaluate        scoring dialogs/s in fp32 and bf16, the metric difference on the same
                    dialogs, and the authors' evaluation loop at fp32 on the same dialogs
    teacher         emotion teacher (ResNet50) training images/s in fp32 and bf16
    anchors         k-means: libKMCUDA vs our CPU backend vs scikit-learn, time and inertia

Each section reports its peak memory. Models are randomly initialised and the data is the
synthetic demo data (throughput does not depend on either). Without a GPU (``--device cpu``)
the same code runs at the ``tiny`` preset on small data in under a minute, to keep it working:
those figures are not GPU figures, and ``open`` lists what is left to measure.

    python bench/gpu.py [--device auto|cuda|cpu] [--budget-s 420] [--out FILE]

On a GPU the document is also written to ``bench/results/gpu-<device>.json`` unless ``--out``
names another file.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from anchors import compare_backends, synthetic_features
from data_loading import device_dialogs_per_s, dialogs_per_s_per_worker
from srs_throughput import (
    Bench,
    eval_seconds,
    make_batches,
    mean_text_tokens,
    new_model,
    peak_bf16,
    prepare,
    sync,
    train_mfu,
    train_rate,
)

from srs_core.config import load_config
from srs_core.data.dataset import SrsDataset
from srs_core.data.report import Report
from srs_core.data.synth import synthesize
from srs_core.emotion.images import Ser30kImages, load_split
from srs_core.emotion.teacher import MIN_LR_RATIO, build_teacher, train_epoch
from srs_core.evaluate import summarize
from srs_core.metrics import positive_ranks
from srs_core.model import flops_per_dialog, param_groups
from srs_core.process import keep_freed_memory
from srs_core.runtime.precision import autocast_context
from srs_core.runtime.schedule import cosine_with_warmup
from srs_core.runtime.trainer import build_optimizer

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_BATCH = 4  # dialogs per GPU in the paper (2 GPUs x 4)
METRIC_TOLERANCE = 1e-3  # bf16 evaluation may move no metric by more


@dataclass(frozen=True)
class Mode:
    """Sizes of one run: the paper preset on a GPU, or the tiny one on the CPU."""

    name: str
    preset: str
    budget_s: float
    dialogs: int  # demo training dialogs (the test split gets a sixth)
    sets: int
    ser30k_images: int
    eval_dialogs: int
    pool: int  # distinct training dialogs the timed batches are drawn from
    max_batch: int
    min_seconds: float  # each timed measurement runs at least this long
    loader_dialogs: int
    teacher_steps: int
    anchors: tuple[int, int, int, int]  # samples, dim, k, iterations


MODES = {
    "gpu": Mode("gpu", "paper", 420, 1200, 30, 70, 200, 32, 1024, 1.0, 60, 20,
                (30000, 2048, 60, 100)),
    "cpu-tiny": Mode("cpu-tiny", "tiny", 60, 120, 6, 70, 20, 8, 8, 0.2, 10, 2,
                     (1400, 32, 4, 20)),
}


class Stopped(BaseException):
    """SIGTERM (gpu.sh's timeout): stop measuring and print what there is."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped("stopped by SIGTERM (gpu.sh's 8-minute timeout)")


class PeakMemory:
    """Peak memory of a block, in MB: torch's GPU allocations and the device's used memory
    (libKMCUDA allocates outside torch), polled; on the CPU the process's resident set.
    Blocks may nest: a block's torch peak includes its inner blocks'."""

    _open: list[PeakMemory] = []

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self.torch_peak = device, 0, 0
        self._stop = threading.Event()

    def _used(self) -> int:
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return total - free
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._used())

    def _torch_peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            for outer in self._open:  # the reset below would lose their peak so far
                outer.torch_peak = max(outer.torch_peak, self._torch_peak())
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self._open.append(self)
        self.peak = self._used()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used())
        self.torch_peak = max(self.torch_peak, self._torch_peak())
        self._open.remove(self)
        for outer in self._open:
            outer.torch_peak = max(outer.torch_peak, self.torch_peak)

    def as_dict(self) -> dict[str, float]:
        if self.device.type == "cuda":
            return {"gpu_torch": round(self.torch_peak / 2**20, 1),
                    "gpu_device": round(self.peak / 2**20, 1)}
        return {"rss": round(self.peak / 2**20, 1)}


class Run:
    """What the sections share: device, sizes, deadline, demo data and earlier results."""

    def __init__(self, device: torch.device, mode: Mode, budget_s: float, work: Path) -> None:
        self.device, self.mode, self.work = device, mode, work
        self.deadline = time.monotonic() + budget_s
        self.reserve = 0.0  # seconds the sections after the current one need
        self.results: dict[str, dict] = {}
        self._bench: Bench | None = None

    def left(self) -> float:
        """Seconds the current section may still take."""
        return self.deadline - time.monotonic() - self.reserve

    @property
    def data(self) -> Path:
        if not (self.work / "data").exists():
            size = 128 if self.mode.preset == "paper" else 32  # the preset's input size
            synthesize(self.work / "data", seed=0, dialogs=self.mode.dialogs,
                       sets=self.mode.sets, images=self.mode.ser30k_images, image_size=size)
        return self.work / "data"

    def bench(self) -> Bench:
        if self._bench is None:
            self._bench = prepare(self.mode.preset, self.data, self.work, self.mode.eval_dialogs)
        return self._bench


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _batch_search(run: Run, model, optimizer, items: list, tokens: int, precision: str,
                  seconds: float) -> dict:
    """Training dialogs/s from batch 4, doubling until out of memory, the mode's largest
    batch, or ``seconds`` (the next size is expected to take 2.5 times the last)."""
    bench, device, mode = run.bench(), run.device, run.mode
    deadline = time.monotonic() + seconds
    tried, size, stopped = [], PAPER_BATCH, ""
    while not stopped:
        if size > mode.max_batch:
            stopped = f"max batch {mode.max_batch} reached"
            break
        if tried and deadline - time.monotonic() < 2.5 * tried[-1]["seconds"]:
            stopped = f"time budget ({seconds:.0f} s for this precision)"
            break
        started, out_of_memory = time.perf_counter(), False
        with PeakMemory(device) as memory:
            try:
                batch = {k: v.to(device) for k, v in
                         make_batches(bench, size, 1, items)[0].items()}  # [size, 10, 3, S, S]
                rate = train_rate(model, bench, optimizer, [batch, batch], device, precision,
                                  mode.min_seconds)
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True
        batch = None
        optimizer.zero_grad(set_to_none=True)
        _free(device)
        if out_of_memory:
            stopped = f"out of memory at batch {size}"
            break
        tried.append({"batch_size": size, "dialogs_s": round(rate, 3),
                      "mfu": train_mfu(bench.cfg, rate, tokens, device),
                      "peak_memory_mb": memory.as_dict(),
                      "seconds": round(time.perf_counter() - started, 2)})
        size *= 2
    return {"paper_batch": tried[0] if tried else None, "largest": tried[-1] if tried else None,
            "stopped": stopped, "tried": tried}


def train_section(run: Run) -> dict:
    bench, device = run.bench(), run.device
    items = [bench.dataset[i] for i in range(run.mode.pool)]
    tokens = mean_text_tokens(make_batches(bench, run.mode.pool, 1, items)[0])
    model = new_model(bench, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    result = {
        "preset": run.mode.preset, "parameters": sum(p.numel() for p in model.parameters()),
        "losses": "every term but emotion distillation (no teacher forward)",
        "mean_text_tokens": tokens,
        "flops_per_dialog": flops_per_dialog(bench.cfg.model, tokens, training=True),
        "peak_bf16_flops": peak_bf16(device),
    }
    # bf16 (what training uses on a GPU) first, with at most half the time left; fp32 the rest
    result["bf16"] = _batch_search(run, model, optimizer, items, tokens, "bf16", run.left() / 2)
    result["fp32"] = _batch_search(run, model, optimizer, items, tokens, "fp32", run.left())
    for key in ("paper_batch", "largest"):
        fp32, bf16 = result["fp32"][key], result["bf16"][key]
        if fp32 and bf16 and fp32["batch_size"] == bf16["batch_size"]:
            result[f"bf16_over_fp32_{key}"] = round(bf16["dialogs_s"] / fp32["dialogs_s"], 2)
    return result


def input_pipeline_section(run: Run) -> dict:
    """Both augmentation paths (``train.augment``): ``loader`` (one worker augments) and
    ``device`` (one worker gathers, the training device augments the batch)."""
    bench, device, dialogs = run.bench(), run.device, run.mode.loader_dialogs
    on_device = SrsDataset(bench.train_examples, bench.cache, train=True, simclr=True,
                           on_device=True)
    per_worker = {"loader": dialogs_per_s_per_worker(bench.dataset, dialogs),
                  "device": dialogs_per_s_per_worker(on_device, dialogs)}
    workers = bench.cfg.train.num_workers
    result = {"per_worker_dialogs_s": {k: round(v, 2) for k, v in per_worker.items()},
              "device_augment_dialogs_s": round(device_dialogs_per_s(
                  on_device, dialogs, device=device, gather=False), 2),
              "configured_workers": workers, "cpu_cores": len(os.sched_getaffinity(0))}
    train = run.results.get("train", {}).get("bf16")
    if not train or not train.get("paper_batch"):
        result["gpu_step_dialogs_s"] = None
        result["why"] = "no bf16 training rate from the train section to compare with"
        return result
    rates = {"paper_batch": train["paper_batch"]["dialogs_s"],
             "largest": train["largest"]["dialogs_s"]}
    result["gpu_step_dialogs_s"] = rates
    result["workers_needed"] = {path: {k: math.ceil(v / rate) for k, v in rates.items()}
                                for path, rate in per_worker.items()}
    result["gpu_waits"] = {path: rate * max(workers, 1) < rates["paper_batch"]
                           for path, rate in per_worker.items()}
    return result


def evaluate_section(run: Run) -> dict:
    bench, device = run.bench(), run.device
    if device.type == "cuda":
        bench.cfg.eval.batch_size = 32  # the CPU default (8) is too small a batch for a GPU
    model = new_model(bench, device)
    scores, seconds = {}, {}
    for precision in ("fp32", "bf16"):
        with autocast_context(device, precision):
            # the first pass on a GPU warms up kernels; the second is timed
            for _ in range(2 if device.type == "cuda" else 1):
                scores[precision], seconds[precision] = eval_seconds(model, bench, device)
    _, authors_seconds = eval_seconds(model, bench, device, "authors")
    metrics = {p: summarize(s) for p, s in scores.items()}
    diffs = {k: abs(metrics["fp32"][k] - metrics["bf16"][k]) for k in metrics["fp32"]}
    worst = max(diffs, key=diffs.get)
    ranks = {p: positive_ranks(s.itm) for p, s in scores.items()}
    top2 = np.sort(scores["fp32"].itm, axis=1)[:, -2:]  # [N, 2]
    n = len(bench.test_examples)
    result = {
        "dialogs": n, "model": "random initialisation (seed 0)",
        "fp32_dialogs_s": round(n / seconds["fp32"], 2),
        "bf16_dialogs_s": round(n / seconds["bf16"], 2),
        "bf16_over_fp32": round(seconds["fp32"] / seconds["bf16"], 2),
        "authors_loop_fp32_dialogs_s": round(n / authors_seconds, 2),
        "fp32_over_authors_loop": round(authors_seconds / seconds["fp32"], 2),
        "eval_batch_size": bench.cfg.eval.batch_size,
        "metrics_fp32": {k: round(v, 4) for k, v in metrics["fp32"].items()},
        "max_metric_diff": round(diffs[worst], 6), "worst_metric": worst,
        "max_itm_score_diff": float(np.abs(scores["fp32"].itm - scores["bf16"].itm).max()),
        "median_top2_itm_gap_fp32": float(np.median(top2[:, 1] - top2[:, 0])),
        "dialogs_ranked_differently": int((ranks["fp32"] != ranks["bf16"]).sum()),
        "ok": diffs[worst] < METRIC_TOLERANCE,
    }
    if not result["ok"]:
        result["why"] = ("a randomly initialised model's candidate scores are nearly tied "
                         "(median top-2 gap above), within bf16's rounding: ranks flip; the "
                         "check needs a trained model")
    return result


def teacher_section(run: Run) -> dict:
    device, e = run.device, load_config(preset=run.mode.preset).emotion
    root = str(run.data / "ser30k")
    dataset = Ser30kImages(root, load_split(root, root, "train", Report()), e.image_size, True)
    images, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=e.batch_size)))
    steps = run.mode.teacher_steps
    result = {"image_size": e.image_size, "batch_size": len(labels), "steps": steps}
    for precision in ("fp32", "bf16"):
        model, _ = build_teacher(e.seed, "", device)
        optimizer = build_optimizer(param_groups(model, e.weight_decay), lr=e.lr)
        scheduler = cosine_with_warmup(optimizer, 0, steps + 1, MIN_LR_RATIO)
        train_epoch(model, [(images, labels)], optimizer, scheduler, device, precision)  # warm-up
        sync(device)
        started = time.perf_counter()
        train_epoch(model, [(images, labels)] * steps, optimizer, scheduler, device, precision)
        sync(device)
        result[f"{precision}_images_s"] = round(
            steps * len(labels) / (time.perf_counter() - started), 1)
    return result


def anchors_section(run: Run) -> dict:
    samples, dim, k, iterations = run.mode.anchors
    features, labels = synthetic_features(samples, dim, blobs=max(2, k + k // 3), seed=0)
    result = {"features": [samples, dim]}
    result.update(compare_backends(features, labels, k, iterations, seed=0))
    if "kmcuda" not in result:
        result["kmcuda"] = None
        result["kmcuda_why"] = ("no GPU" if run.device.type != "cuda"
                                else "libKMCUDA is not installed (the CUDA image builds it)")
    return result


# The evaluate section scores a random-init model: its fp32-vs-bf16 check is not the real one.
TRAINED_METRICS = {"figure": "fp32-vs-bf16 metric difference of a trained model",
                   "why": "the evaluate section scores a randomly initialised model"}
COMPILED = {"figure": "training speed-up of train.compile",
            "why": "not timed here: compiling the paper model would take minutes of the 8"}

# name, function, seconds it needs at least on a GPU (the CPU mode's are a tenth)
SECTIONS: list[tuple[str, Callable[[Run], dict], float]] = [
    ("train", train_section, 90),
    ("input_pipeline", input_pipeline_section, 15),
    ("evaluate", evaluate_section, 30),
    ("teacher", teacher_section, 20),
    ("anchors", anchors_section, 60),
]


def run_sections(run: Run) -> dict[str, dict]:
    """Each section in turn, guarded, with its peak memory; a stop skips the rest."""
    scale = 1.0 if run.mode.name == "gpu" else 0.1
    stopped = ""
    for index, (name, function, needs) in enumerate(SECTIONS):
        run.reserve = scale * sum(n for _, _, n in SECTIONS[index + 1:])
        left = run.deadline - time.monotonic()
        if stopped or left < scale * needs:
            why = stopped or f"time budget: {left:.0f} s left, needs ~{scale * needs:.0f}"
            run.results[name] = {"skipped": why}
            continue
        started = time.perf_counter()
        try:
            with PeakMemory(run.device) as memory:
                result = function(run)
            result["peak_memory_mb"] = memory.as_dict()
        except Stopped as exc:
            result, stopped = {"error": str(exc)}, f"not run: {exc}"
        except Exception as exc:  # one broken section must not hide the others' figures
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.perf_counter() - started, 2)
        run.results[name] = result
        _free(run.device)
    return run.results


def open_figures(run: Run) -> list[dict[str, str]]:
    """Figures this run did not measure, with why."""
    if run.mode.name != "gpu":
        why = "no GPU: this run is the tiny preset on the CPU, kept to check the script works"
        return [{"figure": f, "why": why} for f in (
            "SRS training dialogs/s, paper preset, fp32 and bf16, batch 4 and largest batch",
            "MFU against the GPU's dense bf16 peak", "peak GPU memory of each section",
            "loader workers needed per GPU", "evaluation dialogs/s and fp32-vs-bf16 metrics "
            "on a GPU", "teacher training images/s on a GPU", "anchors with libKMCUDA")
        ] + [TRAINED_METRICS, COMPILED]
    missing = [{"figure": name, "why": r.get("error") or r["skipped"]}
               for name, r in run.results.items() if "error" in r or "skipped" in r]
    if run.results.get("train", {}).get("peak_bf16_flops", 1) is None:
        missing.append({"figure": "MFU", "why": "this GPU is not in srs_throughput.PEAK_BF16"})
    if run.results.get("anchors", {}).get("kmcuda", 1) is None:
        missing.append({"figure": "anchors with libKMCUDA",
                        "why": run.results["anchors"]["kmcuda_why"]})
    return [*missing, TRAINED_METRICS, COMPILED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--budget-s", type=float,
                        help="seconds for all sections (default: 420 on a GPU, 60 on the CPU)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    keep_freed_memory()  # as the product's training and evaluation processes do
    gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if gpu and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    device = torch.device("cuda" if gpu else "cpu")
    mode = MODES["gpu" if gpu else "cpu-tiny"]
    signal.signal(signal.SIGTERM, _raise_stopped)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(device, mode, args.budget_s or mode.budget_s, Path(tmp))
        sections = run_sections(run)
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    document = {
        "device": name, "gpu": gpu, "mode": mode.name, "preset": mode.preset,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "note": None if gpu else "no GPU: the same code on the CPU at the tiny preset; "
                                 "these are not GPU figures",
        "seconds": round(time.perf_counter() - started, 1),
        "sections": sections, "open": open_figures(run),
    }
    text = json.dumps(document, indent=2)
    print(text)
    out = args.out or (gpu and RESULTS / f"gpu-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.json")
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
