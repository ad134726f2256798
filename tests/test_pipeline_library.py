"""The pipeline's library steps: build_index (on by default) feeding evaluation, and the deploy
flag (none|render|apply) rendering or applying this run's InferenceService.

Compiled with the real `kfp.compiler`; the deploy step runs for real under `kfp.local`. The
whole DAG with build_index on and deploy=render runs in the end-to-end local run of
tests/test_pipeline.py (one full run: they are slow on two cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import components
from components._image import BASE_IMAGE, GPU_IMAGE
from pipelines.platform import GPU_NODE_LABEL, GPU_RESOURCE, STORE_SECRET

CHECKPOINT, INDEX = "s3://srs-runs/r7/srs/best.pt", "s3://srs-runs/r7/index"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    from kfp import compiler

    from pipelines.pipeline import srs_pipeline

    path = tmp_path_factory.mktemp("compiled") / "srs-pipeline.yaml"
    compiler.Compiler().compile(srs_pipeline, str(path))
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform


def _dags(spec: dict) -> dict[str, dict]:
    """Every DAG of the pipeline by component name (the root as "root")."""
    return {"root": spec["root"]["dag"],
            **{name: c["dag"] for name, c in spec["components"].items() if "dag" in c}}


def _task(spec: dict, name: str) -> tuple[str, dict]:
    """(the DAG holding it, the task) of the one task called ``name``."""
    (found,) = [(dag, tasks["tasks"][name]) for dag, tasks in _dags(spec).items()
                if name in tasks["tasks"]]
    return found


def _executor(spec: dict, platform: dict, task: dict) -> tuple[dict, dict]:
    """(container, Kubernetes settings) of a task's executor."""
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return (spec["deploymentSpec"]["executors"][label]["container"],
            platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][label])


def _condition(spec: dict, dag: str) -> str:
    """The trigger condition of the condition task that runs ``dag``."""
    (task,) = [t for tasks in _dags(spec).values() for t in tasks["tasks"].values()
               if t["componentRef"]["name"] == dag]
    return task["triggerPolicy"]["condition"]


def test_new_parameters_and_their_defaults(compiled) -> None:
    from components._image import BASE_IMAGE
    from pipelines.pipeline import DEPLOY_MODES
    from pipelines.runner import pipeline_parameters
    from srs_core.deploy import DEPLOY_MODES as LIBRARY_MODES

    spec, _ = compiled
    defaults = {name: p.get("defaultValue") for name, p in
                spec["root"]["inputDefinitions"]["parameters"].items()}
    assert {k: defaults[k] for k in ("build_index", "deploy", "serving_name",
                                     "serving_namespace", "serving_image",
                                     "serving_wait_minutes")} == {
        "build_index": True, "deploy": "none", "serving_name": "srs-suggest",
        "serving_namespace": "", "serving_image": BASE_IMAGE, "serving_wait_minutes": 15.0}
    assert DEPLOY_MODES == LIBRARY_MODES
    assert pipeline_parameters()["build_index"] == (bool, True)  # `--param build_index=false`


def test_build_index_runs_after_training_on_a_gpu_node_with_the_platform_settings(
        compiled) -> None:
    spec, platform = compiled
    dag, task = _task(spec, "build-index")
    assert _condition(spec, dag) == "inputs.parameter_values['pipelinechannel--build_index'] " \
                                    "== true"
    container, settings = _executor(spec, platform, task)
    assert container["image"] == GPU_IMAGE
    assert container["resources"]["accelerator"]["resourceType"] == GPU_RESOURCE
    assert settings["nodeSelector"]["labels"] == {GPU_NODE_LABEL[0]: GPU_NODE_LABEL[1]}
    assert container["resources"]["resourceMemoryLimit"] == "32Gi"
    assert settings["secretAsEnv"][0]["secretName"] == STORE_SECRET
    assert settings["securityContext"]["runAsNonRoot"] is True
    assert "retryPolicy" in task and not task.get("cachingOptions", {}).get("enableCache")
    # its inputs are the trained checkpoint (one of the training branches) and the data
    inputs = task["inputs"]["parameters"]
    assert set(inputs) == {"checkpoint", "stickerchat", "output_root"}
    # the off branch: a CPU no-op, so that evaluation always gets an index URI ("" = none)
    dag, off = _task(spec, "no-index")
    assert _condition(spec, dag).startswith("!(inputs.parameter_values['pipelinechannel--"
                                            "build_index'] == true)")
    container, _ = _executor(spec, platform, off)
    assert container["image"] == BASE_IMAGE and "accelerator" not in container["resources"]


def test_evaluation_gets_the_index_of_either_branch(compiled) -> None:
    spec, _ = compiled
    evaluate = spec["root"]["dag"]["tasks"]["evaluate"]
    source = evaluate["inputs"]["parameters"]["library"]["taskOutputParameter"]
    branches = spec["components"][f"comp-{source['producerTask']}"]
    names = {t["taskInfo"]["name"] for t in branches["dag"]["tasks"].values()}
    assert names == {"with-index", "without-index"}
    assert source["producerTask"] in evaluate["dependentTasks"]


def test_deploy_runs_after_evaluation_only_when_asked(compiled) -> None:
    spec, platform = compiled
    dag, task = _task(spec, "deploy-model")
    assert _condition(spec, dag) == "inputs.parameter_values['pipelinechannel--deploy'] != " \
                                    "'none'"
    (condition,) = [t for t in spec["root"]["dag"]["tasks"].values()
                    if t["componentRef"]["name"] == dag]
    assert "evaluate" in condition["dependentTasks"]  # only a model that evaluated
    assert condition["taskInfo"]["name"] == "deploy"
    container, settings = _executor(spec, platform, task)
    assert container["image"] == BASE_IMAGE and "accelerator" not in container["resources"]
    # "" namespace = the run's own: the step learns it from the downward API
    assert settings["fieldPathAsEnv"] == [{"fieldPath": "metadata.namespace",
                                           "name": "SRS_NAMESPACE"}]
    assert settings["secretAsEnv"][0]["secretName"] == STORE_SECRET  # writes the YAML
    assert "retryPolicy" in task and not task.get("cachingOptions", {}).get("enableCache")
    inputs = task["inputs"]["parameters"]
    assert {"mode", "checkpoint", "index", "name", "namespace", "image", "wait_minutes",
            "run_id", "output_root"} == set(inputs)


# --- the steps, run for real with kfp.local ---------------------------------------------------


@pytest.fixture()
def kfp_local(tmp_path: Path) -> Path:
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
    return tmp_path


@pytest.mark.slow
def test_deploy_render_writes_the_manifest_to_the_run_and_as_an_artifact(
        kfp_local: Path, capfd: pytest.CaptureFixture) -> None:
    from srs_core.artifacts import RunOutputs
    from srs_core.deploy import inference_service
    from srs_core.launch.spec import RUN_ID_LABEL

    root = str(kfp_local / "run")
    task = components.deploy_model(mode="render", checkpoint=CHECKPOINT, index=INDEX,
                                   output_root=root, name="srs-suggest", namespace="team-a",
                                   image=BASE_IMAGE, wait_minutes=1.0, run_id="run-7")
    assert task.outputs["Output"] == RunOutputs(root).inference_service
    stored = Path(RunOutputs(root).inference_service).read_text(encoding="utf-8")
    assert Path(task.outputs["manifest"].path).read_text(encoding="utf-8") == stored
    assert yaml.safe_load(stored) == inference_service(
        "srs-suggest", "team-a", BASE_IMAGE, CHECKPOINT, INDEX, labels={RUN_ID_LABEL: "run-7"})
    assert task.outputs["manifest"].metadata["mode"] == "render"
    # without an index (build_index=false) there is nothing to serve: the step says so
    assert components.no_index().output == ""
    with pytest.raises(RuntimeError, match="deploy-model.*FAILURE"):
        components.deploy_model(mode="render", checkpoint=CHECKPOINT, index="",
                                output_root=root, name="srs-suggest", namespace="",
                                image=BASE_IMAGE, wait_minutes=1.0, run_id="")
    assert "build_index=true" in "".join(capfd.readouterr())
