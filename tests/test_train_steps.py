"""The training step's fast paths on CPU: gradient accumulation, torch.compile, pinned loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srs_core.config import load_config
from srs_core.data.synth import synthesize
from srs_core.runtime.checkpoint import CheckpointManager, load_torch
from srs_core.runtime.distributed import init_distributed
from srs_core.runtime.trainer import compile_module, gradient_sync
from srs_core.train.batches import mean_losses, optimizer_steps, train_loader
from srs_core.train.loop import SelectorTrainer, train


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    synthesize(out, seed=11, dialogs=24, sets=6, images=14)
    return out


def _config(demo: Path, output: Path, *extra: str):
    return load_config(preset="tiny", overrides=[
        f"data.stickerchat={demo / 'stickerchat'}", f"train.output={output}",
        "train.log_every=1", "eval.batch_size=8", *extra])


def _halves(batch: dict) -> list[dict]:
    """A batch of 4 dialogs as two micro-batches of 2 (``views`` is ``[2, B, ...]``)."""
    def part(key: str, value: torch.Tensor, half: slice) -> torch.Tensor:
        return value[:, half] if key == "views" else value[half]

    return [{k: part(k, v, half) for k, v in batch.items()} for half in (slice(0, 2),
                                                                         slice(2, 4))]


def test_accumulated_gradient_equals_the_whole_batch(demo, emotion, tmp_path) -> None:
    """With only a per-dialog term (emotion distillation: a mean over candidates, no batch
    statistics), 2 micro-batches of 2 give the gradient of one batch of 4."""
    teacher, anchors = emotion
    terms = ["loss.ita=false", "loss.itm=false", "loss.simclr_intra=false",
             "loss.simclr_inter=false", f"emotion.teacher={teacher}", f"emotion.anchors={anchors}"]
    dist = init_distributed()
    whole = SelectorTrainer(_config(demo, tmp_path / "whole", "train.batch_size=4", *terms), dist)
    split = SelectorTrainer(_config(demo, tmp_path / "split", "train.batch_size=2",
                                    "train.grad_accumulation=2", *terms), dist)
    assert whole.steps_per_epoch == split.steps_per_epoch == 24 // 4
    assert whole.global_batch == split.global_batch == 4
    batch = next(iter(whole.epoch_loader()))
    whole_losses, _ = whole.train_step([batch])
    split_losses, _ = split.train_step(_halves(batch))
    torch.testing.assert_close(split_losses["loss"], whole_losses["loss"], rtol=1e-6, atol=1e-6)
    compared = 0
    for (name, a), b in zip(whole.model.named_parameters(), split.model.parameters(),
                            strict=True):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
            compared += 1
    assert compared > 10  # the ViT and the emotion head
    assert split.state.step == 1 and split.state.position == 1


def test_resumed_position_skips_whole_optimizer_steps(demo, tmp_path) -> None:
    cfg = _config(demo, tmp_path / "run", "train.batch_size=2", "train.grad_accumulation=3",
                  "loss.emotion=false")
    trainer = SelectorTrainer(cfg, init_distributed())
    assert trainer.steps_per_epoch == 24 // 6 and trainer.global_batch == 6
    trainer.state.position = 1
    groups = list(optimizer_steps(trainer.epoch_loader(), 3))
    assert len(trainer.sampler) == 24 - 6  # one step = 3 micro-batches of 2 dialogs skipped
    assert len(groups) == 3 and all(len(group) == 3 for group in groups)


def test_optimizer_steps_group_and_drop_a_short_tail() -> None:
    assert list(optimizer_steps(range(7), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(optimizer_steps(range(2), 1)) == [[0], [1]]
    losses = mean_losses([{"loss": torch.tensor(1.0)}, {"loss": torch.tensor(2.0)}])
    assert losses["loss"].item() == 1.5


def test_loader_pins_memory_only_for_cuda(demo, tmp_path) -> None:
    cfg = _config(demo, tmp_path / "run", "loss.emotion=false")
    trainer = SelectorTrainer(cfg, init_distributed())
    assert not trainer.epoch_loader().pin_memory  # CPU run
    loader = train_loader(trainer.dataset, trainer.sampler, trainer.tokenize, cfg,
                          torch.device("cuda"), epoch=0)  # built, never iterated: no GPU needed
    assert loader.pin_memory


def test_gradient_sync_and_compile_wrappers() -> None:
    module = torch.nn.Linear(2, 2)
    assert compile_module(module, "none") is module
    compiled = compile_module(module, "default", backend="aot_eager")
    assert compiled._orig_mod is module
    with gradient_sync(compiled, sync=False):  # no DDP: nothing to hold back
        pass
    with pytest.raises(Exception, match="not one of"):
        compile_module(module, "fastest")


def _history(output: Path) -> dict[int, float]:
    history = [json.loads(line) for line in (output / "history.jsonl").open()]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.mark.slow
def test_compiled_run_trains_like_the_eager_one(demo, tmp_path) -> None:
    """``train.compile`` with ``aot_eager`` (no C++ compiler needed): same checkpoint keys,
    the same losses for the first steps up to kernel rounding."""
    # Contexts cut to 16 tokens give every batch one shape: a single compilation.
    settings = ("train.max_steps=3", "train.batch_size=4", "data.max_text_tokens=16",
                "loss.emotion=false", "loss.itm=false", "loss.simclr_inter=false")
    plain = train(_config(demo, tmp_path / "plain", *settings))
    compiled = train(_config(demo, tmp_path / "compiled", *settings, "train.compile=default",
                             "train.compile_backend=aot_eager"))
    assert plain["steps"] == compiled["steps"] == 3
    expected, got = _history(tmp_path / "plain"), _history(tmp_path / "compiled")
    assert sorted(got) == [1, 2, 3]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-3, abs=1e-4)
    newest = CheckpointManager(str(tmp_path / "plain" / "checkpoints")).latest_name()
    for name in (f"checkpoints/{newest}", "best.pt"):
        keys = load_torch(str(tmp_path / "compiled" / name))["model"].keys()
        assert keys == load_torch(str(tmp_path / "plain" / name))["model"].keys()
        assert not any("_orig_mod" in key for key in keys)
