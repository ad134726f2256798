"""The sticker library: index every sticker with the trained model, and serve it with KServe."""

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from components._image import BASE_IMAGE, GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def build_index(checkpoint: str, stickerchat: str, output_root: str, summary: Output[Metrics]
                ) -> str:
    """Embed every sticker of every set with ``checkpoint`` (``srs index build``); logs the
    counts and stickers/s. Returns the index URI, for evaluation and serving."""
    from srs_core.artifacts import RunOutputs
    from srs_core.library import build_index as index_library

    out = RunOutputs(output_root).index
    built = index_library(checkpoint, stickerchat, out, progress=False)
    for name in ("stickers", "sets", "stickers_per_s", "seconds"):
        summary.log_metric(name, float(built[name]))
    return out


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def no_index() -> str:
    """The ``build_index=false`` branch: no index, so evaluation ranks the protocol's
    candidates only (no ``library_*`` metrics)."""
    return ""


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def deploy_model(
    mode: str,
    checkpoint: str,
    index: str,
    output_root: str,
    name: str,
    namespace: str,
    image: str,
    wait_minutes: float,
    run_id: str,
    manifest: Output[Artifact],
) -> str:
    """Render the KServe InferenceService serving ``checkpoint`` with ``index`` to
    ``<output_root>/serving/inferenceservice.yaml`` and the ``manifest`` artifact; with
    ``mode=apply`` also create or update it (``namespace`` "" = this run's) and wait up to
    ``wait_minutes`` for Ready. Returns the stored manifest's URI."""
    import json
    from pathlib import Path

    from srs_core.deploy import deploy_model as deploy

    done = deploy(mode, checkpoint, index, output_root, image, name=name, namespace=namespace,
                  wait_seconds=wait_minutes * 60, run_id=run_id)
    Path(manifest.path).write_text(done["yaml"], encoding="utf-8")
    manifest.metadata["mode"] = mode
    if done["outcome"]:
        print(json.dumps(done["outcome"], indent=2))
        manifest.metadata["url"] = done["outcome"]["url"]
    return done["manifest_uri"]
