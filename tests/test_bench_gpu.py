"""bench/gpu.sh without a GPU: a real run of every section at the tiny preset on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("train", "input_pipeline", "evaluate", "teacher", "anchors")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench-gpu") / "cpu.json"
    # this interpreter as it is (gpu.sh would otherwise set up the project's virtualenv);
    # a budget no loaded CI machine runs out of, so that every section is measured
    env = {**os.environ, "SRS_PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--budget-s", "600",
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=400, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    printed = json.loads(done.stdout)
    assert json.loads(out.read_text()) == printed
    return printed


def test_cpu_mode_says_it_is_not_a_gpu_run(document):
    assert document["mode"] == "cpu-tiny" and document["gpu"] is False
    assert document["preset"] == "tiny" and "no GPU" in document["note"]


@pytest.mark.parametrize("name", SECTIONS)
def test_every_section_measured_with_its_peak_memory(document, name):
    section = document["sections"][name]
    assert "error" not in section and "skipped" not in section, section
    assert section["peak_memory_mb"]["rss"] > 0
    assert section["seconds"] > 0


def test_train_from_batch_4_up_in_both_precisions(document):
    train = document["sections"]["train"]
    assert train["flops_per_dialog"] > 0 and train["peak_bf16_flops"] is None
    for precision in ("fp32", "bf16"):
        search = train[precision]
        assert search["paper_batch"]["batch_size"] == 4
        assert search["largest"]["batch_size"] >= 4 and search["stopped"]
        assert all(t["dialogs_s"] > 0 and t["mfu"] is None for t in search["tried"])


def test_input_pipeline_compared_with_the_training_rate(document):
    pipeline = document["sections"]["input_pipeline"]
    train = document["sections"]["train"]["bf16"]
    paths = {"loader", "device"}  # train.augment: who augments
    assert set(pipeline["per_worker_dialogs_s"]) == paths
    assert min(pipeline["per_worker_dialogs_s"].values()) > 0
    assert pipeline["device_augment_dialogs_s"] > 0
    assert pipeline["gpu_step_dialogs_s"]["paper_batch"] == train["paper_batch"]["dialogs_s"]
    assert set(pipeline["workers_needed"]) == set(pipeline["gpu_waits"]) == paths
    assert min(n for needed in pipeline["workers_needed"].values() for n in needed.values()) >= 1
    assert all(isinstance(waits, bool) for waits in pipeline["gpu_waits"].values())


def test_evaluate_reports_the_fp32_vs_bf16_metric_difference(document):
    evaluate = document["sections"]["evaluate"]
    assert evaluate["fp32_dialogs_s"] > 0 and evaluate["bf16_dialogs_s"] > 0
    assert evaluate["authors_loop_fp32_dialogs_s"] > 0 and evaluate["fp32_over_authors_loop"] > 0
    assert evaluate["max_metric_diff"] >= 0 and evaluate["worst_metric"]
    assert evaluate["ok"] == (evaluate["max_metric_diff"] < 1e-3)
    assert 0 <= evaluate["dialogs_ranked_differently"] <= evaluate["dialogs"]


def test_teacher_and_anchors(document):
    teacher, anchors = document["sections"]["teacher"], document["sections"]["anchors"]
    assert teacher["fp32_images_s"] > 0 and teacher["bf16_images_s"] > 0
    assert anchors["kmcuda"] is None and anchors["kmcuda_why"] == "no GPU"
    for backend in ("ours_cpu", "baseline_sklearn"):
        assert anchors[backend]["seconds"] >= 0 and anchors[backend]["inertia"] > 0


def test_open_lists_the_gpu_only_figures(document):
    figures = " | ".join(f["figure"] for f in document["open"])
    for figure in ("paper preset", "MFU", "peak GPU memory", "libKMCUDA", "trained model"):
        assert figure in figures
    assert all(f["why"] for f in document["open"])


def test_a_failing_section_is_recorded_and_the_others_still_run(monkeypatch, tmp_path):
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import gpu

    def broken(run):
        raise RuntimeError("kaput")

    monkeypatch.setattr(gpu, "SECTIONS", [("broken", broken, 0), ("fine", lambda run: {}, 0),
                                          ("late", lambda run: {}, 1000)])
    run = gpu.Run(torch.device("cpu"), gpu.MODES["cpu-tiny"], budget_s=30, work=tmp_path)
    results = gpu.run_sections(run)
    assert results["broken"]["error"] == "RuntimeError: kaput"
    assert "rss" in results["fine"]["peak_memory_mb"]
    assert results["late"]["skipped"].startswith("time budget")
