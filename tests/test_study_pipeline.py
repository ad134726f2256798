"""The study pipeline: its compiled DAG (shared steps once, a ParallelFor over the variants with
its parallelism, a Collected fan-in), each variant's settings, `srs study compile|render|run`
and one real local study on tiny data (slow)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from srs_core.cli import main
from srs_core.errors import ConfigError
from srs_core.study import ablation
from srs_core.study.run import pipeline_items, variant_root, variant_run

SHARED = ("validate", "prepare_sentiment", "train_emotion_teacher", "cluster_anchors")


def compile_study(tmp_path: Path, *args: str) -> dict:
    path = tmp_path / "study.yaml"
    assert main(["study", "compile", "--out", str(path), *args]) == 0
    return next(yaml.safe_load_all(path.read_text()))


def functions(spec: dict, dag: dict) -> list[str]:
    """The Python function of each container task of ``dag`` (not nested ones)."""
    found = []
    for task in dag["tasks"].values():
        component = spec["components"][task["componentRef"]["name"]]
        if "executorLabel" in component:
            args = spec["deploymentSpec"]["executors"][component["executorLabel"]][
                "container"]["args"]
            found.append(args[args.index("--function_to_execute") + 1])
    return found


def every_function(spec: dict) -> list[str]:
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return [name for dag in dags for name in functions(spec, dag)]


def test_the_shared_steps_run_once_then_a_parallel_for_then_a_collected_fan_in(
        tmp_path: Path) -> None:
    spec = compile_study(tmp_path, "--param", "parallelism=3")
    assert spec["pipelineInfo"]["name"] == "srs-study"
    root = spec["root"]["dag"]["tasks"]
    assert sorted(functions(spec, spec["root"]["dag"])) == sorted([*SHARED, "compare_variants"])
    names = every_function(spec)
    assert all(names.count(step) == 1 for step in SHARED), names  # nowhere inside the loop
    loop = root["for-loop-1"]
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--variants"}
    assert loop["iteratorPolicy"] == {"parallelismLimit": 3}
    assert set(loop["dependentTasks"]) == {"validate", "prepare-sentiment",
                                           "train-emotion-teacher", "cluster-anchors"}
    body = spec["components"][loop["componentRef"]["name"]]["dag"]
    assert sorted(functions(spec, body)) == ["evaluate", "study_variant"]
    assert {"condition-branches-2", "condition-branches-6"} <= set(body["tasks"])  # train, index
    assert body["outputs"]["parameters"]["pipelinechannel--evaluate-Output"][
        "valueFromParameter"]["producerSubtask"] == "evaluate"
    compared = root["compare-variants"]
    assert compared["dependentTasks"] == ["for-loop-1"]
    assert compared["inputs"]["parameters"]["evaluations"] == {"taskOutputParameter": {
        "outputParameterKey": "pipelinechannel--evaluate-Output", "producerTask": "for-loop-1"}}
    assert compared["inputs"]["parameters"]["variants"] == {
        "componentInputParameter": "variants"}
    outputs = spec["components"]["comp-compare-variants"]["outputDefinitions"]
    kinds = {name: a["artifactType"]["schemaTitle"] for name, a in outputs["artifacts"].items()}
    assert kinds == {"report": "system.HTML", "summary": "system.Markdown",
                     "best": "system.Metrics"}
    assert set(outputs["parameters"]) == {"variant", "checkpoint", "index", "comparison",
                                          "version"}
    # the built-in ablation is the default study, the run's parameters are the main pipeline's
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["variants"]["defaultValue"] == pipeline_items(ablation())
    assert len(inputs["variants"]["defaultValue"]) == 7
    assert {"job_queue", "training_backend", "overrides", "build_index"} <= set(inputs)


def test_each_variant_trains_its_own_job_under_its_own_root(tmp_path: Path) -> None:
    spec = compile_study(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    trains = [label for label, e in executors.items()
              if "train_srs" in e["container"]["args"][e["container"]["args"].index(
                  "--function_to_execute") + 1]]
    assert len(trains) == 3  # pytorchjob, trainjob, in-step: one branch runs per variant
    tasks = [t for c in spec["components"].values() if "dag" in c
             for t in c["dag"]["tasks"].values() if t["taskInfo"]["name"].startswith("train-srs")]
    for task in tasks:
        inputs = task["inputs"]["parameters"]
        # the variant's name (job name), root and overrides come from its study_variant step
        assert inputs["variant"] == {"componentInputParameter":
                                     "pipelinechannel--study-variant-name"}
        assert inputs["output_root"] == {"componentInputParameter":
                                         "pipelinechannel--study-variant-output_root"}
    assert {t["inputs"]["parameters"]["queue"]["componentInputParameter"] for t in tasks
            if "queue" in t["inputs"]["parameters"]} == {"pipelinechannel--job_queue"}


def test_a_study_file_is_the_compiled_default_and_compile_takes_no_run_parameters(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = tmp_path / "two.yaml"
    study.write_text("variants:\n  full: {}\n  no-emotion: {loss.emotion: false}\n")
    spec = compile_study(tmp_path, "--study", str(study), "--seeds", "2")
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert [v["name"] for v in inputs["variants"]["defaultValue"]] == [
        "full/seed0", "full/seed1", "no-emotion/seed0", "no-emotion/seed1"]
    assert inputs["study_name"]["defaultValue"] == "two"
    assert main(["study", "compile", "--out", str(tmp_path / "x.yaml"),
                 "--param", "epochs=2"]) == 2
    assert "give run parameters when you submit or run" in caplog.text


@pytest.mark.parametrize("param, message", [
    ("epoch=2", "unknown parameter 'epoch'"),
    ("parallelism=-1", "parallelism=-1: expected an integer >= 0"),
    ("deploy=render", "unknown parameter 'deploy'"),
    ("overrides=eval.protocol=paper", "eval.protocol=paper selects best.pt on the test split"),
])
def test_bad_parameters_exit_2_before_anything_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, param: str, message: str) -> None:
    code = main(["study", "run", "--local", "--data", str(tmp_path / "none"), "--out",
                 str(tmp_path / "out"), "--study", "ablation", "--param", param])
    assert code == 2
    assert message in caplog.text
    assert not (tmp_path / "out").exists()


def test_a_variant_resolves_against_the_run_settings() -> None:
    item = {"name": "long", "overrides": "train.epochs=3 loss.emotion=false"}
    run = variant_run(item, "/runs/s", "tiny", "train.lr=0.001", epochs=1, batch_size=8)
    assert run.output_root == variant_root("/runs/s", "long") == "/runs/s/variants/long"
    assert shlex.split(run.overrides) == ["train.lr=0.001", "train.epochs=3", "loss.emotion=false"]
    assert (run.epochs, run.batch_size) == (3, 8)  # the variant's epochs win over the run's
    seeded = variant_run({"name": "full/seed1", "overrides": "train.seed=43"}, "/r", "tiny", "",
                         1, 8)
    assert seeded.output_root == "/r/variants/full-seed1" and seeded.name == "full/seed1"
    with pytest.raises(ConfigError, match="emotion.k is built once for the whole study"):
        variant_run({"name": "k4", "overrides": "emotion.k=4"}, "/r", "tiny", "", 1, 8)
    with pytest.raises(ConfigError, match="study variant 'x': eval.protocol=paper"):
        variant_run({"name": "x", "overrides": "eval.protocol=paper"}, "/r", "tiny", "", 1, 8)
    with pytest.raises(ConfigError, match="train.output is not a variant setting"):
        variant_run({"name": "x", "overrides": "train.output=/y"}, "/r", "tiny", "", 1, 8)
    with pytest.raises(ConfigError, match="expected"):
        variant_run({"overrides": ""}, "/r", "tiny", "", 1, 8)


def test_render_katib_prints_the_experiment(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            caplog: pytest.LogCaptureFixture) -> None:
    study = tmp_path / "lr.yaml"
    study.write_text("sweep:\n  method: grid\n  parallelism: 2\n  parameters:\n"
                     "    train.lr: {values: [0.0001, 0.001]}\n")
    assert main(["study", "render", "--kind", "katib", "--image", "ghcr.io/x/srs:1-cuda",
                 "--study", str(study), "--queue", "srs-queue"]) == 0
    experiment = yaml.safe_load(capsys.readouterr().out)
    assert experiment["kind"] == "Experiment" and experiment["metadata"]["name"] == "srs-lr"
    assert experiment["spec"]["parallelTrialCount"] == 2
    assert experiment["spec"]["objective"]["objectiveMetricName"] == "val_MAP"
    trial = experiment["spec"]["trialTemplate"]["trialSpec"]
    assert trial["kind"] == "TrainJob"
    assert "s3://srs-runs/sweeps/srs-lr/${trialParameters.trialName}" in json.dumps(trial)
    plain = tmp_path / "plain.yaml"
    plain.write_text("variants:\n  full: {}\n")
    assert main(["study", "render", "--kind", "katib", "--image", "i", "--study",
                 str(plain)]) == 2
    assert "no sweep" in caplog.text


@pytest.mark.slow
def test_local_study_runs_the_shared_steps_once_and_every_variant(
        tmp_path: Path, capsys: pytest.CaptureFixture, mlflow_server: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two variants under kfp.local (torchrun on CPU, tiny preset, 2 training steps each),
    tracked in a real MLflow server on loopback, the best registered."""
    from srs_core.data.synth import synthesize

    monkeypatch.delenv("SRS_TRACKING", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"study-{tmp_path.name}")

    data, out = tmp_path / "data", tmp_path / "study"
    synthesize(str(data), seed=1, dialogs=48, sets=6, images=56, image_size=32)
    study = tmp_path / "two.yaml"
    study.write_text("variants:\n  full: {}\n  no-emotion: {loss.emotion: false}\n")
    code = main(["study", "run", "--local", "--data", str(data), "--out", str(out),
                 "--study", str(study), "--param", "parallelism=2", "--param", "epochs=1",
                 "--param", "anchors_k=2", "--param", "batch_size=8",
                 "--param", "build_index=false", "--param", "registered_model=study-best",
                 "--param", "registered_alias=champion", "--param",
                 "overrides=emotion.epochs=1 train.max_steps=2 train.log_every=1"])
    assert code == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    (run_dir,) = [p for p in (out / "kfp").iterdir() if p.is_dir()]
    steps = sorted(p.parent.relative_to(run_dir).as_posix()
                   for p in run_dir.rglob("executor_output.json"))
    # the shared steps once; per variant: resolve, train, no-index, evaluate; one comparison
    for step in ("validate", "prepare-sentiment", "train-emotion-teacher", "cluster-anchors",
                 "compare-variants"):
        assert steps.count(step) == 1, steps
    for i in (0, 1):
        assert {f"for-loop-1-iteration-{i}/{s}" for s in (
            "study-variant", "train-srs-3", "no-index", "evaluate")} <= set(steps), steps
    assert len(steps) == 5 + 2 * 4
    assert "srs-metric val_MAP=" in captured.err  # what Katib's collector reads
    compared = json.loads((out / "comparison" / "comparison.json").read_text())
    for name in ("full", "no-emotion"):
        root = out / "variants" / name
        assert (root / "srs" / "best.pt").is_file()
        evaluated = json.loads((root / "evaluate" / "test" / "metrics.json").read_text())
        assert compared["runs"][name]["test_MAP"] == evaluated["metrics"]["MAP"]
        assert compared["runs"][name]["test_paper_MAP"] == evaluated["paper"]["metrics"]["MAP"]
    vals = {name: run["val_MAP"] for name, run in compared["runs"].items()}
    assert compared["best"] == printed["best"] == max(vals, key=vals.get)  # on validation
    assert printed["model"]["checkpoint"] == str(out / "variants" / compared["best"] / "srs"
                                                 / "best.pt")
    assert printed["best_metrics"] == compared["best_metrics"]
    for kind in ("csv", "md", "html"):
        assert (out / "comparison" / f"comparison.{kind}").is_file()
    artifacts = json.loads((run_dir / "compare-variants" / "executor_output.json").read_text())
    logged = artifacts["artifacts"]["best"]["artifacts"][0]["metadata"]
    assert logged == compared["best_metrics"]
    summary = artifacts["artifacts"]["summary"]["artifacts"][0]["uri"]
    assert Path(summary).read_text() == (out / "comparison" / "comparison.md").read_text()
    _check_tracked_study(mlflow_server, f"study-{tmp_path.name}", compared, printed)


def _check_tracked_study(uri: str, experiment: str, compared: dict, printed: dict) -> None:
    """Every variant's train and evaluate run under one pipeline run, the comparison run with
    the best metrics and reports, and the best model's registered version with its lineage."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert {"train-full", "train-no-emotion", "compare"} <= set(by_name), sorted(by_name)
    (parent,) = [run for run in runs if run.data.tags.get("srs.role") == "pipeline"]
    assert parent.info.status == "FINISHED"
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId")
                == parent.info.run_id]
    assert sum(run.info.run_name.startswith("evaluate") for run in children) == 2
    for name in ("full", "no-emotion"):
        trained = by_name[f"train-{name}"]
        assert trained.data.tags["srs.variant"] == name
        assert trained.data.params["loss.emotion"] == str(name == "full")
        assert "loss" in trained.data.metrics and "val_MAP" in trained.data.metrics
    compare = by_name["compare"]
    assert compare.data.metrics["val_MAP"] == pytest.approx(compared["best_metrics"]["val_MAP"])
    files = {f.path for f in client.list_artifacts(compare.info.run_id, "comparison")}
    assert {f"comparison/comparison.{kind}" for kind in ("json", "csv", "md", "html")} <= files
    version = client.get_model_version_by_alias("study-best", "champion")
    assert version.tags["srs.checkpoint"] == printed["model"]["checkpoint"]
    assert version.run_id == compare.info.run_id


def test_training_metric_lines_are_what_the_katib_collector_reads() -> None:
    import re

    from srs_core.metrics import METRIC_FORMAT, metric_lines

    text = metric_lines("val", {"MAP": 0.5, "R10@1": 0.25, "ITA_MAP": 0.125})
    assert re.findall(METRIC_FORMAT, text) == [("val_MAP", "0.5"), ("val_R10@1", "0.25"),
                                               ("val_ITA_MAP", "0.125")]


def test_submit_sends_the_study_pipeline_with_its_variants(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    import threading

    from test_pipeline import KfpStub  # the stub KFP API server of the main pipeline's tests

    server = KfpStub()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    study = tmp_path / "two.yaml"
    study.write_text("variants:\n  full: {}\n  no-emotion: {loss.emotion: false}\n")
    try:
        assert main(["study", "submit", "--host", server.url, "--study", str(study),
                     "--param", "parallelism=1", "--param", "job_queue=srs-queue",
                     "--param", "training_backend=trainjob"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert json.loads(capsys.readouterr().out)["run_id"] == "run-0001"
    run = server.requests[-1]["body"]
    assert run["runtime_config"]["parameters"] == {
        "job_queue": "srs-queue", "training_backend": "trainjob", "study_name": "two",
        "variants": [{"name": "full", "overrides": ""},
                     {"name": "no-emotion", "overrides": "loss.emotion=false"}]}
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "srs-study"
    assert spec["root"]["dag"]["tasks"]["for-loop-1"]["iteratorPolicy"] == {
        "parallelismLimit": 1}
