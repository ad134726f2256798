"""The KFP components: thin, self-contained wrappers whose calls match the library they wrap,
and the data steps run for real under `kfp.local`."""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import components
from components._image import BASE_IMAGE, GPU_IMAGE

COMPONENTS = {name: getattr(components, name) for name in components.__all__}
GPU_STEPS = {"train_emotion_teacher", "cluster_anchors", "train_srs", "evaluate", "build_index"}


def _body(component) -> ast.FunctionDef:
    source = textwrap.dedent(inspect.getsource(component.python_func))
    return next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef))


def _library_names(function: ast.FunctionDef) -> dict[str, object]:
    """Names a component body imports from srs_core, resolved to the real objects."""
    names: dict[str, object] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("srs_core"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is None:  # a submodule, e.g. `from srs_core import store`
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                names[alias.asname or alias.name] = value
    return names


def test_the_components_have_constant_images() -> None:
    assert set(COMPONENTS) == {"validate", "prepare_sentiment", "train_emotion_teacher",
                               "cluster_anchors", "train_srs", "evaluate", "build_index",
                               "no_index", "deploy_model", "study_variant", "compare_variants"}
    for name, component in COMPONENTS.items():
        container = component.component_spec.implementation.container
        assert container.image == (GPU_IMAGE if name in GPU_STEPS else BASE_IMAGE), name
        # the project and kfp are in the image: no pip install when the step starts
        assert "pip install" not in " ".join(container.command), name


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_bodies_import_only_the_library_and_stdlib(name: str) -> None:
    """KFP ships only the function's source: everything must be imported inside it, and only
    from srs_core or the standard library (pipelines -> components -> srs_core)."""
    function = _body(COMPONENTS[name])
    for node in ast.walk(function):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            assert top == "srs_core" or top in sys.stdlib_module_names, f"{name}: {module}"
    code = function.body[1:] if isinstance(function.body[0], ast.Expr) else function.body
    lines = function.end_lineno - code[0].lineno + 1  # the body below the docstring
    assert lines <= 40, f"{name} is no longer a thin wrapper ({lines} lines)"


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_library_calls_match_the_library_signatures(name: str) -> None:
    """Every call a component makes into srs_core binds to the real signature (catches a
    renamed or added parameter before a cluster run does)."""
    function = _body(COMPONENTS[name])
    library = _library_names(function)
    checked = 0
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        target = None
        if isinstance(node.func, ast.Name) and node.func.id in library:
            target = library[node.func.id]
        elif (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
              and inspect.ismodule(library.get(node.func.value.id))):
            target = getattr(library[node.func.value.id], node.func.attr)
        if not inspect.isfunction(target):  # classes (errors, records) are not entry points
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords):
            continue
        signature = inspect.signature(target)
        signature.bind(*node.args, **{k.arg: k.value for k in node.keywords})
        checked += 1
    # (no_index, the build_index=false branch, is a no-op that imports nothing)
    assert checked >= 1 or not library, f"{name} imports srs_core but calls none of it"


# --- the CPU steps, run for real with kfp.local -----------------------------------------------


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from srs_core.data.synth import synthesize

    root = tmp_path_factory.mktemp("demo")
    synthesize(str(root), seed=3, dialogs=30, sets=4, images=28, image_size=32)
    return root


@pytest.fixture()
def kfp_local(tmp_path: Path) -> Path:
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
    return tmp_path


def test_validate_component_reports_and_counts(demo_data: Path, kfp_local: Path) -> None:
    task = components.validate(stickerchat=str(demo_data / "stickerchat"),
                               ser30k=str(demo_data / "ser30k"), strict=True,
                               anchors_k=4)  # the demo's SER30K classes hold a few images
    assert task.outputs["stickerchat"] == str(demo_data / "stickerchat")
    assert task.outputs["ser30k"] == str(demo_data / "ser30k")
    counts = task.outputs["counts"].metadata
    assert counts["usable_dialogs_train"] == 30 and counts["usable_dialogs_test"] == 5
    assert counts["usable_images_train"] == 28
    assert counts["problem_small_set"] == 1  # a warning: strict mode still passes
    report = Path(task.outputs["report"].path).read_text(encoding="utf-8")
    assert report.startswith("# Data validation") and "result: OK (strict)" in report


def test_validate_component_fails_the_step_on_bad_data_in_strict_mode(
    demo_data: Path, kfp_local: Path, tmp_path: Path
) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(demo_data, broken)
    sticker = next((broken / "stickerchat" / "npy_stickers").glob("*/*.npy"))
    np.save(sticker, np.zeros((4, 4, 7), dtype=np.uint8))  # 7 channels: a bad sticker
    arguments = {"stickerchat": str(broken / "stickerchat"), "ser30k": str(broken / "ser30k"),
                 "anchors_k": 4}
    lenient = components.validate(strict=False, **arguments)
    assert lenient.outputs["counts"].metadata["problem_npy_bad_shape"] == 1
    with pytest.raises(RuntimeError, match="validate.*FAILURE"):
        components.validate(strict=True, **arguments)


def test_prepare_sentiment_component_writes_the_training_polarity(
    demo_data: Path, kfp_local: Path
) -> None:
    from srs_core import store

    task = components.prepare_sentiment(stickerchat=str(demo_data / "stickerchat"),
                                        output_root=str(kfp_local / "run"), workers=0)
    root = task.output
    assert root == store.join(str(kfp_local / "run"), "sentiment")
    lines = Path(root, "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 30


# --- the training step's PyTorchJob branch (the launcher itself is tested in test_launch_*) -----


RUN_ID = "0f6c2a8e-1b7d-4c35-9a51-2d1f0f3f9b11"  # what KFP puts in {{$.pipeline_job_uuid}}


def _train_inputs(root: Path, **changes: object) -> dict:
    from types import SimpleNamespace

    inputs = dict(
        stickerchat="s3://data/stickerchat", sentiment="s3://runs/r1/sentiment",
        teacher="s3://runs/r1/teacher/teacher.pth", anchors="s3://runs/r1/anchors/a-k60.npy",
        output_root=str(root), preset="paper", overrides="train.lr=2e-4 loss.emotion=false",
        epochs=3, batch_size=4, backend="pytorchjob", nodes=4, gpus_per_node=8,
        job_image="ghcr.io/srs-kubeflow/srs:0.1.0-cuda", job_cleanup="always",
        timeout_hours=2.0, store_secret="srs-minio", run_id=RUN_ID,
        report=SimpleNamespace(path=str(root / "kfp" / "report.html")),
    )
    (root / "kfp").mkdir(parents=True, exist_ok=True)
    return {**inputs, **changes}


def test_train_component_builds_a_valid_pytorchjob_from_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import srs_core.launch.step as launch  # where the step calls the launchers
    from srs_core.launch import job_name, render_pytorchjob

    launched = []
    monkeypatch.setattr(launch, "run_pytorchjob", lambda spec, **kw: launched.append((spec, kw)))
    # what the srs-defaults ConfigMap and the downward API give the step in a cluster
    monkeypatch.setenv("SRS_JOB_NAMESPACE", "team-a")
    monkeypatch.setenv("SRS_JOB_NODE_SELECTOR", "nvidia.com/gpu.present=true")
    monkeypatch.setenv("SRS_JOB_TOLERATIONS", "nvidia.com/gpu:NoSchedule")
    inputs = _train_inputs(tmp_path)
    output, checkpoint = components.train_srs.python_func(**inputs)

    assert output == str(tmp_path / "srs") and checkpoint == str(tmp_path / "srs" / "best.pt")
    ((spec, options),) = launched
    assert options == {"timeout": 7200.0, "cleanup": "always"}
    # a restarted step computes the same name, so the launcher adopts the running job
    assert spec.name == job_name("srs-train", RUN_ID)
    manifest = render_pytorchjob(spec)  # validated against the Training Operator's CRD
    assert manifest["metadata"]["namespace"] == "team-a"
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    assert manifest["spec"]["nprocPerNode"] == "8"
    pod = replicas["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == inputs["job_image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    args = container["args"]
    assert args[args.index("train"):args.index("train") + 3] == ["train", "--preset", "paper"]
    for setting in ("train.lr=2e-4", "loss.emotion=false", "data.stickerchat=s3://data/stickerchat",
                    f"data.sentiment={inputs['sentiment']}", f"emotion.teacher={inputs['teacher']}",
                    f"emotion.anchors={inputs['anchors']}", f"train.output={output}",
                    "train.epochs=3", "train.batch_size=4"):
        assert setting in args
    # the run's parameters come after the free-form overrides, so they win
    assert args.index("train.epochs=3") > args.index("train.lr=2e-4")
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
               if "valueFrom" in e}
    assert secrets == {"srs-minio"}
    assert "SRS training" in Path(inputs["report"].path).read_text(encoding="utf-8")


def test_train_component_fails_when_the_job_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import srs_core.launch.step as launch  # where the step calls the launchers
    from srs_core.errors import JobError

    def failed(spec, **options):
        raise JobError(f"PyTorchJob team-a/{spec.name} failed: Master exited with code 1")

    monkeypatch.setattr(launch, "run_pytorchjob", failed)
    inputs = _train_inputs(tmp_path)
    with pytest.raises(JobError, match="exited with code 1"):
        components.train_srs.python_func(**inputs)
    assert not Path(inputs["report"].path).exists()  # no report of a training that failed


def test_validate_component_refuses_out_of_range_run_parameters(
    demo_data: Path, kfp_local: Path, capfd: pytest.CaptureFixture
) -> None:
    """A run started from the UI with a bad parameter stops in the first step, before work."""
    arguments = {"stickerchat": str(demo_data / "stickerchat"),
                 "ser30k": str(demo_data / "ser30k"), "strict": False}
    with pytest.raises(RuntimeError, match="validate.*FAILURE"):
        components.validate(eval_split="train", **arguments)
    assert "eval_split must be one of val, test" in "".join(capfd.readouterr())
    with pytest.raises(RuntimeError, match="validate.*FAILURE"):
        components.validate(overrides="train.lrr=1", **arguments)
    assert "unknown key train.lrr" in "".join(capfd.readouterr())
