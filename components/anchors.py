"""Cluster the anchors: k-means per emotion over the teacher's SER30K features (GPU node)."""

from kfp import dsl

from components._image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def cluster_anchors(
    ser30k: str,
    teacher: str,
    k: int,
    output_root: str,
    preset: str,
    overrides: str,
) -> str:
    """Build the ``[7*K, 2048]`` anchors (libKMCUDA on a GPU, CPU k-means elsewhere).

    Returns the URI of the anchors ``.npy`` (config key ``emotion.anchors``).
    """
    import shlex

    from srs_core.artifacts import RunOutputs
    from srs_core.config import load_config
    from srs_core.emotion.anchors import build_anchors

    cfg = load_config([], shlex.split(overrides), preset=preset)
    e = cfg.emotion
    sidecar = build_anchors(
        ser30k, teacher, k, RunOutputs(output_root).anchors(k),
        backend=e.kmeans_backend, seed=e.seed, image_size=e.image_size,
        iterations=e.kmeans_iterations,
    )
    return sidecar["anchors"]
