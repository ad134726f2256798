"""The built images: what a platform team checks, and the CUDA image's imports without a GPU.

Needs root, buildah and the images (``images/ci-smoke.sh`` builds them and runs this file;
``SRS_SMOKE_CPU_IMAGE`` / ``SRS_SMOKE_CUDA_IMAGE`` name them); otherwise skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from image_runner import USER, Container, missing

from components._image import BASE_IMAGE, GPU_IMAGE

IMAGES = {"cpu": os.environ.get("SRS_SMOKE_CPU_IMAGE", BASE_IMAGE),
          "cuda": os.environ.get("SRS_SMOKE_CUDA_IMAGE", GPU_IMAGE)}
ARCHS = os.environ.get("SRS_SMOKE_CUDA_ARCHS", "80 86 90").split()
BUILD_TOOLS = ("gcc", "cc", "g++", "c++", "make", "cmake", "nvcc", "pip", "pip3")

pytestmark = pytest.mark.slow


def _image(kind: str) -> str:
    reason = missing(IMAGES[kind])
    if reason:
        pytest.skip(reason)
    return IMAGES[kind]


@pytest.fixture(scope="module", params=sorted(IMAGES))
def image(request: pytest.FixtureRequest) -> tuple[str, Container]:
    box = Container(_image(request.param))
    yield request.param, box
    box.remove()


def test_labels_user_and_no_build_tools_or_caches(image: tuple[str, Container]) -> None:
    kind, box = image
    config = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", IMAGES[kind]],
                                       check=True, capture_output=True, text=True).stdout)
    labels = config["OCIv1"]["config"].get("Labels", {})
    for key in ("source", "revision", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert box.user == USER
    root = Path(box.root)
    for folder in ("usr/bin", "usr/local/bin", "opt/venv/bin"):
        present = [tool for tool in BUILD_TOOLS if (root / folder / tool).exists()]
        assert not present, f"{kind}: build tools in /{folder}: {present}"
    assert not (root / "usr/local/cuda").exists()
    assert not list((root / "opt/venv/lib/python3.11/site-packages").glob("pip/"))
    for cache in ("root/.cache", "home/srs/.cache", "run/secrets", "tmp/kmcuda"):
        assert not (root / cache).exists() or not any((root / cache).iterdir()), cache
    assert not [p for p in (root / "var/lib/apt/lists").glob("*") if p.name != "lock"
                and p.name != "partial"], "apt lists left in the image"


IMPORTS = """
import importlib, sys
import torch, timm, torchvision, srs_core, kfp
print("torch", torch.__version__, "timm", timm.__version__)
try:
    import libKMCUDA
except ImportError as error:
    print("without a GPU:", error)
for arch in sys.argv[1:]:
    # as on a GPU of that compute capability: the loader must pick that build
    torch.cuda.is_available = lambda: True
    torch.cuda.get_device_capability = lambda device=0, a=arch: (int(a[0]), int(a[1:]))
    sys.modules.pop("libKMCUDA", None)
    module = importlib.import_module("libKMCUDA")
    print("loaded", arch, module.__file__, callable(module.kmeans_cuda))
"""


def test_cuda_image_imports_torch_timm_srs_core_and_each_kmcuda_build(tmp_path: Path) -> None:
    box = Container(_image("cuda"))
    try:
        result = box.run(["python", "-c", IMPORTS, *ARCHS], {}, tmp_path, timeout=600)
    finally:
        box.remove()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("without a GPU: libKMCUDA: no CUDA device") for line in lines)
    for arch in ARCHS:
        assert f"loaded {arch} /opt/kmcuda/sm_{arch}/libKMCUDA.so True" in lines, result.stdout
