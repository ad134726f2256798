"""Container images of the components: the one place their names and tags are defined.

``images/build.sh`` tags what it builds with these (it reads REGISTRY, NAME and VERSION from
this file), the components and the pipeline use them, and the manifests' image references are
checked against them (tests/test_images.py). KFP v2 fixes a component's image when the
component is defined (``base_image`` is written into the compiled YAML as a literal), so the
image cannot be a pipeline parameter: a new image is a new tag here and a recompile. The one
image a run can choose is the PyTorchJob's worker image, which the training step passes to the
launcher as an ordinary string (pipeline parameter ``job_image``, default :data:`GPU_IMAGE`).
"""

REGISTRY = "ghcr.io/srs-kubeflow"
NAME = "srs"
VERSION = "0.1.0"
# CPU image: data validation and sentiment preparation.
BASE_IMAGE = f"{REGISTRY}/{NAME}:{VERSION}-cpu"
# CUDA image (PyTorch + libKMCUDA): teacher, anchors, SRS training and evaluation.
GPU_IMAGE = f"{REGISTRY}/{NAME}:{VERSION}-cuda"
