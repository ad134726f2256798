"""A study as one KFP v2 pipeline: the shared steps once, then every variant, then a comparison.

```
validate ──► prepare_sentiment ──────────────────────────┐
    └──────► train_emotion_teacher ──► cluster_anchors ──┤   (once per study)
ParallelFor(variants, parallelism) ◄─────────────────────┘
    study_variant ──► train_srs ──► build_index ──► evaluate      (per variant)
compare_variants(Collected(evaluate))  ──► HTML + Markdown + Metrics (best on validation MAP)
```

The shared steps and each variant's train/index/evaluate are the main pipeline's own builders
(:func:`pipelines.pipeline.shared_steps`, :func:`pipelines.pipeline.train_and_evaluate`), with
the same components, resources, retries and caching. ``variants`` is a list of
``{"name", "overrides"}`` (:func:`srs_core.study.run.pipeline_items`; default: the built-in
``ablation``); each variant writes under ``<output_root>/variants/<slug>/`` and, on a cluster,
launches its own PyTorchJob/TrainJob (named after the run and the variant) in the run's Kueue
queue, so the queue decides which variants run when. ``parallelism`` bounds the variants in
flight; KFP fixes it at compile time (``dsl.ParallelFor``), so it is an argument of
:func:`make_study_pipeline`, not a run parameter.

The comparison selects on validation MAP only and returns the best variant's name, checkpoint
and index URIs (``compare_variants``' outputs): what a model registry step consumes.
"""

# No `from __future__ import annotations`: KFP reads the parameter types at definition time.
from kfp import dsl
from kfp.dsl import Metrics
from kfp.dsl.graph_component import GraphComponent

from components import compare_variants, study_variant
from components._image import GPU_IMAGE
from pipelines.pipeline import shared_steps, train_and_evaluate
from pipelines.platform import as_non_root, with_resources, with_store_secret
from srs_core.study import ablation
from srs_core.study.run import pipeline_items

STUDY_PIPELINE_NAME = "srs-study"
DEFAULT_PARALLELISM = 4
STUDY_RESOURCES = {"variant": ("0.1", "256Mi"), "compare": ("1", "2Gi")}
ABLATION_ITEMS = pipeline_items(ablation())


def make_study_pipeline(parallelism: int = DEFAULT_PARALLELISM,
                        variants: list | None = None,
                        study_name: str = "ablation") -> GraphComponent:
    """The study pipeline with at most ``parallelism`` variants in flight (0 = no limit);
    ``variants`` and ``study_name`` are its parameters' defaults (default: ``ablation``)."""
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 0:
        raise ValueError(f"study parallelism must be an integer >= 0, got {parallelism!r}")
    default_items, default_name = variants or ABLATION_ITEMS, study_name

    @dsl.pipeline(name=STUDY_PIPELINE_NAME,
                  description="A study: the shared steps once, then train and evaluate every "
                  "variant, and compare them (best on validation MAP).")
    def srs_study(
        variants: list = default_items,
        study_name: str = default_name,
        stickerchat_uri: str = "s3://srs-data/stickerchat",
        ser30k_uri: str = "s3://srs-data/ser30k",
        output_root: str = "s3://srs-runs/study",
        preset: str = "paper",
        overrides: str = "",
        anchors_k: int = 60,
        epochs: int = 5,
        batch_size: int = 4,
        train_nodes: int = 2,
        gpus_per_node: int = 1,
        training_backend: str = "pytorchjob",
        job_image: str = GPU_IMAGE,
        job_cleanup: str = "on-success",
        train_timeout_hours: float = 72.0,
        job_queue: str = "",
        job_priority_class: str = "",
        pending_timeout_minutes: float = 60.0,
        job_owner: str = "none",
        sentiment_workers: int = 4,
        strict_validation: bool = False,
        eval_split: str = "test",
        build_index: bool = True,
        registered_model: str = "srs-selector",
        registered_alias: str = "",
    ) -> Metrics:
        """Every variant of a study on shared upstream steps; returns the best's metrics.

        The parameters are the main pipeline's (``srs pipeline params``) and mean the same
        for every variant; ``variants``: ``[{"name", "overrides"}, ...]``, each variant's
        ``section.key=value`` settings applied after ``overrides``; ``study_name``: the
        reports' title; ``registered_model`` / ``registered_alias``: the best variant (on
        validation MAP) is registered as a new version of that MLflow model ("" = not) and
        the alias (e.g. ``champion``; "" = none) pointed at it.
        """
        params = dict(locals())  # the pipeline parameters by name, for the shared builders
        shared = shared_steps(params)
        with dsl.ParallelFor(variants, parallelism=parallelism, name="variants") as item:
            variant = study_variant(variant=item, output_root=output_root, preset=preset,
                                    overrides=overrides, epochs=epochs, batch_size=batch_size)
            with_resources(variant, *STUDY_RESOURCES["variant"])
            resolved = variant.outputs
            model = train_and_evaluate(
                params, shared, resolved["output_root"], resolved["overrides"],
                resolved["epochs"], resolved["batch_size"], variant=resolved["name"])
        compared = compare_variants(
            variants=variants, evaluations=dsl.Collected(model.scores.outputs["Output"]),
            output_root=output_root, split=eval_split, indexed=build_index,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, registered_model=registered_model,
            registered_alias=registered_alias)
        with_resources(compared, *STUDY_RESOURCES["compare"]).set_caching_options(
            enable_caching=False)
        compared.set_display_name("compare-variants")
        for task in (variant, compared):
            as_non_root(with_store_secret(task))
        return compared.outputs["best"]

    return srs_study


study_pipeline = make_study_pipeline()
