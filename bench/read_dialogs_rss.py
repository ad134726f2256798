"""Peak memory of reading a 320k-line StickerChat file: streaming reader vs load-everything.

Writes a synthetic ``release_train.json`` (the demo-data dialog writer, no images) to a temp
dir, then reads it fully in two fresh subprocesses and prints JSON:
- ours: ``srs_core.data.stickerchat.iter_dialogs`` (streams, parses and checks every line);
- baseline: ``[json.loads(line) for line in file]`` kept as a list (what a naive loader does).
Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of each subprocess. Target: ours
under 500 MB. Usage: ``python bench/read_dialogs_rss.py [--lines 320168]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_MEASURE = """
import json, resource, sys, time
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
root, mode = sys.argv[1], sys.argv[2]
if mode == "ours":
    from srs_core.data.report import Report
    from srs_core.data.stickerchat import iter_dialogs
    import_mb = peak_mb()
    start = time.perf_counter()
    report = Report()
    count = sum(1 for _ in iter_dialogs(root, "train", report=report))
    problems = report.errors
else:
    import_mb = peak_mb()
    start = time.perf_counter()
    with open(root + "/release_train.json", encoding="utf-8") as handle:
        dialogs = [json.loads(line) for line in handle]
    count, problems = len(dialogs), 0
seconds = time.perf_counter() - start
print(json.dumps({"dialogs": count, "problems": problems, "seconds": round(seconds, 2),
                  "dialogs_per_s": round(count / seconds),
                  "import_peak_rss_mb": round(import_mb, 1), "peak_rss_mb": round(peak_mb(), 1)}))
"""


def _measure(root: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(root), mode],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=320_168, help="dialogs in the file")
    parser.add_argument("--sets", type=int, default=500, help="sticker sets referenced")
    args = parser.parse_args()

    from srs_core.data.synth import make_sets, write_dialogs

    with tempfile.TemporaryDirectory(prefix="srs-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        with open(root / "release_train.json", "wb") as handle:
            write_dialogs(handle, make_sets(0, args.sets), args.lines, seed=0)
        write_seconds = time.perf_counter() - start
        ours = _measure(root, "ours")
        baseline = _measure(root, "baseline")
        file_mb = (root / "release_train.json").stat().st_size / 2**20
    print(json.dumps({
        "benchmark": "read_dialogs_rss",
        "lines": args.lines,
        "file_mb": round(file_mb, 1),
        "write_seconds": round(write_seconds, 1),
        "ours": ours,
        "baseline": baseline,
        "peak_rss_ratio_baseline_over_ours": round(
            baseline["peak_rss_mb"] / ours["peak_rss_mb"], 2),
        "speed_ratio_ours_over_baseline": round(
            ours["dialogs_per_s"] / baseline["dialogs_per_s"], 2),
        "target_peak_rss_mb": 500,
        "ours_under_target": ours["peak_rss_mb"] < 500,
    }, indent=2))


if __name__ == "__main__":
    main()
