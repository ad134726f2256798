"""Stand-in for ``import libKMCUDA`` in the CUDA image: loads the build for this GPU.

kmcuda uses only devices whose compute capability equals the ``CUDA_ARCH`` it was compiled for,
so images/Dockerfile.cuda compiles it once per architecture into ``$KMCUDA_ROOT/sm_XY/``. This
module (installed as ``site-packages/libKMCUDA.py``) asks PyTorch for device 0's capability and
puts the matching extension module in its place. Without a GPU or a matching build it raises
ImportError, which the anchors step treats as "use the CPU k-means".
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path


def library_path(capability: tuple[int, int], root: str | os.PathLike) -> Path:
    """``root/sm_XY/libKMCUDA.so`` for compute capability X.Y, or ImportError naming the builds."""
    major, minor = capability
    path = Path(root) / f"sm_{major}{minor}" / "libKMCUDA.so"
    if not path.is_file():
        built = sorted(p.parent.name for p in Path(root).glob("sm_*/libKMCUDA.so"))
        raise ImportError(f"libKMCUDA: no build for compute capability {major}.{minor} in "
                          f"{root} (built: {', '.join(built) or 'none'}); rebuild "
                          f"images/Dockerfile.cuda with CUDA_ARCHS including {major}{minor}")
    return path


def load(root: str | os.PathLike | None = None):
    """Import the extension module built for device 0 (ImportError without a usable GPU)."""
    import torch  # also loads libcurand.so.10 from PyTorch's wheels, which kmcuda links

    if not torch.cuda.is_available():
        raise ImportError("libKMCUDA: no CUDA device is visible")
    path = library_path(torch.cuda.get_device_capability(0),
                        root or os.environ.get("KMCUDA_ROOT", "/opt/kmcuda"))
    loader = importlib.machinery.ExtensionFileLoader("libKMCUDA", str(path))
    spec = importlib.util.spec_from_file_location("libKMCUDA", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


if __name__ == "libKMCUDA":  # imported as the library (not loaded under another name in tests)
    sys.modules[__name__] = load()
