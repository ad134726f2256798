"""What keeping freed memory (``srs_core.process.keep_freed_memory``) is worth; prints JSON.

Runs the CPU benches in fresh processes with ``SRS_KEEP_FREED_MEMORY=0`` (glibc's defaults,
the baseline) and ``1`` (what every ``srs`` training and evaluation process does), in turns,
``--rounds`` times: SRS training and evaluation at the tiny preset (``srs_throughput.py``) and
both augmentation paths at 128 px with SimCLR views (``data_loading.py``). Each figure is
the median over the rounds; the ratio is kept / left alone.

    python bench/malloc.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from srs_core.process import KEEP_FREED_MEMORY_ENV

BENCH = Path(__file__).parent
WORKLOADS = {
    "srs_throughput": ["srs_throughput.py", "--presets", "tiny", "--steps", "20",
                       "--dialogs-per-set", ""],
    "data_loading": ["data_loading.py", "--dialogs", "96", "--rounds", "1"],
}


def _figures(name: str, document: dict) -> dict[str, float]:
    """The figures of one bench's JSON that this comparison reports."""
    if name == "srs_throughput":
        tiny = document["results"][0]
        return {"tiny_train_dialogs_per_s": tiny["train_fp32"]["train_dialogs_per_s"],
                "tiny_eval_dialogs_per_s":
                    tiny["eval"]["demo_test_paper_protocol"]["ours_dialogs_per_s"]}
    paper = next(r for r in document["results"] if r["preset"] == "paper" and r["simclr"])
    return {"paper_simclr_loader_dialogs_per_s": paper["dialogs_per_s_per_worker"],
            "paper_simclr_device_dialogs_per_s": paper["device_batched_dialogs_per_s"]}


def _run(name: str, keep: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env[KEEP_FREED_MEMORY_ENV] = "1" if keep else "0"
    done = subprocess.run([sys.executable, str(BENCH / WORKLOADS[name][0]),
                           *WORKLOADS[name][1:]], env=env, capture_output=True, text=True,
                          check=True)
    return _figures(name, json.loads(done.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for keep in (False, True):
            runs[keep].append({k: v for name in WORKLOADS for k, v in _run(name, keep).items()})
    results = {}
    for figure in runs[False][0]:
        left_alone = statistics.median(r[figure] for r in runs[False])
        kept = statistics.median(r[figure] for r in runs[True])
        results[figure] = {
            "glibc_defaults": round(left_alone, 2), "kept": round(kept, 2),
            "ratio": round(kept / left_alone, 3),
            "ratio_per_round": [round(k[figure] / a[figure], 3)
                                for a, k in zip(runs[False], runs[True], strict=True)]}
    print(json.dumps({"benchmark": "malloc", "rounds": args.rounds, "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
