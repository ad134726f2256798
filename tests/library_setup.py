"""A tiny trained model and its library index, built once per test session.

Both tests/test_library.py and tests/test_serving.py need them; training even the tiny preset
takes tens of seconds on 2 cores, so the result is memoised per pytest process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from srs_core.config import load_config
from srs_core.data.synth import synthesize
from srs_core.library import build_index
from srs_core.train.loop import train

STEPS = 60


@dataclass(frozen=True)
class TinyLibrary:
    root: Path
    stickerchat: str
    checkpoint: str
    index: str
    build_summary: dict


@functools.cache
def tiny_library(base: Path) -> TinyLibrary:
    """Synthesize demo data, train the tiny preset for ``STEPS`` steps, build the index."""
    base.mkdir(parents=True, exist_ok=True)
    synthesize(str(base), seed=7, dialogs=240, sets=12, images=70)
    stickerchat = str(base / "stickerchat")
    cfg = load_config(preset="tiny", overrides=[
        f"data.stickerchat={stickerchat}", f"train.output={base / 'run'}",
        "train.batch_size=8", "eval.batch_size=16", f"train.max_steps={STEPS}",
        "loss.emotion=false", "train.log_every=20", "train.num_workers=0",
        # the paper schedule warms up at warmup_lr for 100 steps: too slow for a few dozen
        "train.warmup_lr=1e-3", "train.lr=1e-3", "train.warmup_step_iterations=1",
        "loss.simclr_intra=false", "loss.simclr_inter=false",
    ])
    train(cfg)
    checkpoint = str(base / "run" / "best.pt")
    summary = build_index(checkpoint, stickerchat, str(base / "index"), progress=False)
    return TinyLibrary(base, stickerchat, checkpoint, str(base / "index"), summary)
