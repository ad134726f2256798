"""The Katib Experiment of a study's sweep: read back into the SDK models, its trial TrainJob
against the vendored Trainer CRD, Katib's parameter substitution run by hand, and the metric
lines against the collector's filter."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeflow_katib_api.models import V1beta1Experiment

from srs_core.config import load_config
from srs_core.errors import ConfigError
from srs_core.launch import JobSpec
from srs_core.launch.spec import QUEUE_LABEL
from srs_core.launch.trainjob import validate_trainjob
from srs_core.study import load_study
from srs_core.study.katib import (
    METRIC_FORMAT,
    OBJECTIVE_METRIC,
    TRIAL_NAME,
    metric_line,
    render_katib_experiment,
    render_katib_yaml,
)

IMAGE = "ghcr.io/srs-kubeflow/srs:0.1.0-cuda"
OUT = "s3://srs/sweeps/demo"
PLACEHOLDER = re.compile(r"\$\{trialParameters\.([^}]+)\}")


def write(tmp_path: Path, sweep: dict, name: str = "sweep.yaml", **top: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**top, "sweep": sweep}, sort_keys=False), encoding="utf-8")
    return path


GRID = {"method": "grid", "parallelism": 3, "parameters": {
    "train.lr": {"values": [1e-4, 3e-4]}, "train.batch_size": {"values": [4, 8, 16]},
    "loss.emotion": {"values": [True, False]}}}
RANDOM = {"method": "random", "trials": 20, "seed": 1, "parameters": {
    "train.lr": {"min": 1e-5, "max": 1e-3, "scale": "log"},
    "train.epochs": {"min": 2, "max": 6},
    "loss.simclr_weight": {"min": 0.1, "max": 1.0},
    "train.lr_schedule": {"values": ["paper", "cosine_per_step"]}}}


def render(tmp_path: Path, sweep: dict, **options: Any) -> dict[str, Any]:
    text = render_katib_yaml(write(tmp_path, sweep), IMAGE, output=OUT, **options)
    return yaml.safe_load(text)


def snake_keys(obj: Any, path: str = "") -> list[str]:
    """Every mapping key written in snake_case (the API server wants camelCase)."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if re.fullmatch(r"[a-z]+(_[a-z]+)+", str(key)):
                found.append(f"{path}.{key}")
            found += snake_keys(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            found += snake_keys(item, f"{path}[{i}]")
    return found


def substitute(manifest: dict, values: dict[str, str]) -> dict:
    """What Katib does to the trial template: replace each ``${trialParameters.x}``."""
    text = yaml.safe_dump(manifest)
    return yaml.safe_load(PLACEHOLDER.sub(lambda m: values[m.group(1)], text))


def trial_config(trial: dict, preset: str | None = None):
    """The Config a trial's ``srs train`` arguments build."""
    args = trial["spec"]["trainer"]["args"]
    assert args[:3] == ["-m", "srs_core.cli", "train"]
    rest = args[3:]
    if rest[:1] == ["--preset"]:
        preset, rest = rest[1], rest[2:]
    return load_config([], rest, preset=preset)


def check_template_parameters(spec: dict) -> None:
    """Katib's rules: every placeholder declared, every declared one used, each referencing a
    search parameter (or the trial's metadata)."""
    template = spec["trialTemplate"]
    declared = {p["name"]: p["reference"] for p in template["trialParameters"]}
    used = set(PLACEHOLDER.findall(yaml.safe_dump(template["trialSpec"])))
    assert used == set(declared)
    names = {p["name"] for p in spec["parameters"]}
    assert {ref for ref in declared.values() if not ref.startswith("${")} == names
    assert declared[TRIAL_NAME] == "${trialSpec.Name}"


def test_grid_sweep_renders_a_valid_experiment(tmp_path: Path) -> None:
    manifest = render(tmp_path, GRID, preset="tiny", namespace="team",
                      overrides=["data.stickerchat=s3://srs/data/stickerchat"])
    assert not snake_keys(manifest)
    model = V1beta1Experiment.from_dict(manifest)
    assert model.to_dict() == manifest
    assert (model.api_version, model.kind) == ("kubeflow.org/v1beta1", "Experiment")
    assert (model.metadata.name, model.metadata.namespace) == ("srs-sweep", "team")
    spec = model.spec
    assert spec.algorithm.algorithm_name == "grid"
    assert (spec.max_trial_count, spec.parallel_trial_count) == (12, 3)
    params = {p.name: p for p in spec.parameters}
    assert list(params) == ["train-lr", "train-batch-size", "loss-emotion"]
    assert (params["train-lr"].parameter_type, params["train-lr"].feasible_space.list) == (
        "discrete", ["0.0001", "0.0003"])
    assert (params["train-batch-size"].parameter_type,
            params["train-batch-size"].feasible_space.list) == ("categorical", ["4", "8", "16"])
    assert params["loss-emotion"].feasible_space.list == ["true", "false"]
    assert spec.objective.type == "maximize"
    assert spec.objective.objective_metric_name == OBJECTIVE_METRIC == "val_MAP"
    assert [(s.name, s.value) for s in spec.objective.metric_strategies] == [("val_MAP", "max")]
    assert spec.metrics_collector_spec.collector.kind == "StdOut"
    assert spec.metrics_collector_spec.source.filter.metrics_format == [METRIC_FORMAT]
    template = spec.trial_template
    assert template.primary_container_name == "node"
    assert template.primary_pod_labels["batch.kubernetes.io/job-completion-index"] == "0"
    assert 'type=="Complete"' in template.success_condition
    assert 'type=="Failed"' in template.failure_condition
    check_template_parameters(manifest["spec"])
    trial = manifest["spec"]["trialTemplate"]["trialSpec"]
    validate_trainjob(trial)
    assert (trial["apiVersion"], trial["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert "name" not in trial["metadata"] and "namespace" not in trial["metadata"]
    assert trial["spec"]["trainer"]["image"] == IMAGE
    assert QUEUE_LABEL not in trial["metadata"]["labels"] and "suspend" not in trial["spec"]


def test_every_grid_point_substituted_as_katib_does_is_the_intended_config(
        tmp_path: Path) -> None:
    manifest = render(tmp_path, GRID, preset="tiny")
    trial = manifest["spec"]["trialTemplate"]["trialSpec"]
    lists = {p["name"]: p["feasibleSpace"]["list"] for p in manifest["spec"]["parameters"]}
    points = [v.overrides for v in load_study(write(tmp_path, GRID, "again.yaml")).variants]
    assert len(points) == 12
    for i, point in enumerate(points):
        values = {"train-lr": lists["train-lr"][[1e-4, 3e-4].index(point["train.lr"])],
                  "train-batch-size": str(point["train.batch_size"]),
                  "loss-emotion": str(point["loss.emotion"]).lower(),
                  TRIAL_NAME: f"srs-sweep-{i:08d}"}
        concrete = substitute(trial, values)
        validate_trainjob(concrete)
        cfg = trial_config(concrete)
        assert cfg.model.image_size == 32  # the tiny preset
        assert (cfg.train.lr, cfg.train.batch_size, cfg.loss.emotion) == (
            point["train.lr"], point["train.batch_size"], point["loss.emotion"])
        assert cfg.train.output == f"{OUT}/srs-sweep-{i:08d}"
        env = {e["name"]: e.get("value") for e in concrete["spec"]["trainer"]["env"]}
        assert env["SRS_JOB_NAME"] == f"srs-sweep-{i:08d}"


def test_random_sweep_has_ranges_with_distributions(tmp_path: Path) -> None:
    job = JobSpec(name="x", image="other", gpus_per_worker=2, workers=2)
    manifest = render(tmp_path, RANDOM, queue="team-a", name="lr-search", job=job, goal=0.9)
    model = V1beta1Experiment.from_dict(manifest)
    assert model.to_dict() == manifest and not snake_keys(manifest)
    spec = model.spec
    assert spec.algorithm.algorithm_name == "random"
    assert (spec.max_trial_count, spec.parallel_trial_count) == (20, 1)
    assert spec.objective.goal == 0.9
    space = {p.name: (p.parameter_type, p.feasible_space) for p in spec.parameters}
    kind, lr = space["train-lr"]
    assert (kind, lr.min, lr.max, lr.distribution) == ("double", "1.0e-05", "0.001",
                                                       "logUniform")
    kind, epochs = space["train-epochs"]
    assert (kind, epochs.min, epochs.max, epochs.distribution) == ("int", "2", "6", "uniform")
    assert space["loss-simclr-weight"][0] == "double"
    assert space["train-lr-schedule"] == ("categorical", space["train-lr-schedule"][1])
    assert space["train-lr-schedule"][1].list == ["paper", "cosine_per_step"]
    check_template_parameters(manifest["spec"])
    trial = manifest["spec"]["trialTemplate"]["trialSpec"]
    validate_trainjob(trial)
    assert trial["metadata"]["labels"][QUEUE_LABEL] == "team-a" and trial["spec"]["suspend"]
    trainer = trial["spec"]["trainer"]
    assert (trainer["image"], trainer["numNodes"], trainer["numProcPerNode"]) == (IMAGE, 2, 2)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    concrete = substitute(trial, {"train-lr": "2.5e-4", "train-epochs": "3",
                                  "loss-simclr-weight": "0.75",
                                  "train-lr-schedule": "cosine_per_step", TRIAL_NAME: "t-1"})
    cfg = trial_config(concrete)
    assert (cfg.train.lr, cfg.train.epochs, cfg.loss.simclr_weight, cfg.train.lr_schedule) == (
        2.5e-4, 3, 0.75, "cosine_per_step")


def test_render_from_a_loaded_sweep_and_refusals(tmp_path: Path) -> None:
    sweep = load_study(write(tmp_path, RANDOM)).sweep
    manifest = render_katib_experiment(sweep, IMAGE, "ns", output=OUT)
    assert manifest["metadata"]["namespace"] == "ns"
    with pytest.raises(ConfigError, match="experiment name"):
        render_katib_experiment(sweep, IMAGE, output=OUT, name="Bad_Name")
    with pytest.raises(ConfigError, match="output URI"):
        render_katib_experiment(sweep, IMAGE, output=" ")
    with pytest.raises(ConfigError, match="image is empty"):
        render_katib_experiment(sweep, "", output=OUT)
    plain = tmp_path / "plain.yaml"
    plain.write_text("variants: {full: {}}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no sweep"):
        render_katib_yaml(plain, IMAGE, output=OUT)
    with pytest.raises(ConfigError, match="seeds: 2"):
        render_katib_yaml(write(tmp_path, RANDOM, "seeded.yaml", seeds=2), IMAGE, output=OUT)
    assert yaml.safe_load(render_katib_yaml(write(tmp_path, RANDOM, "My Sweep.yaml"), IMAGE,
                                            output=OUT))["metadata"]["name"] == "srs-my-sweep"


def test_the_collector_filter_reads_metric_lines_and_nothing_else() -> None:
    pattern = re.compile(METRIC_FORMAT)
    assert pattern.groups == 2  # Katib's filter: the name, then the value
    for name, value in (("val_MAP", 0.8123), ("val_R10@1", 0.5), ("val_MAP", 1e-05),
                        ("test_MRR", 1.0), ("val_MAP", 0)):
        line = metric_line(name, value)
        assert line.startswith("srs-metric ")
        (match,) = pattern.findall(line)
        assert match[0] == name and float(match[1]) == value
        stamped = f"2026-01-02T03:04:05.123Z {line}"  # Katib strips a leading timestamp
        assert pattern.findall(stamped) == [match]
        assert pattern.findall(f"INFO srs_core.train: {line}") == [match]
    assert metric_line("val_MAP", 0.81) == "srs-metric val_MAP=0.81"
    others = ["epoch 1 step 20 loss=0.5213 lr=0.0001 dialogs/s=12.5",
              "val MAP 0.8100 R10@1 0.5000", "val_MAP=0.81", "MAP: 0.81",
              "srs-metric val_MAP 0.81", metric_line("val_MAP", float("nan")),
              metric_line("val_MAP", float("inf"))]
    for line in others:
        assert not pattern.search(line), line
    with pytest.raises(ValueError, match="metric name"):
        metric_line("val MAP", 0.5)
