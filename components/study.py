"""A study's own steps: resolve one variant's settings, and compare every variant (fan-in)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Output

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def study_variant(
    variant: dict,
    output_root: str,
    preset: str,
    overrides: str,
    epochs: int,
    batch_size: int,
) -> NamedTuple("Variant", name=str, output_root=str, overrides=str, epochs=int, batch_size=int):
    """Resolve one item of the study's ``variants`` (``{"name", "overrides"}``) against the
    run's settings: its output root ``<output_root>/variants/<slug>``, the run's overrides
    followed by its own, and its epochs and batch size; fails on a setting the study refuses."""
    from collections import namedtuple
    from dataclasses import astuple

    from srs_core.study.run import variant_run

    run = variant_run(variant, output_root, preset, overrides, epochs, batch_size)
    return namedtuple("Variant", "name output_root overrides epochs batch_size")(*astuple(run))


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def compare_variants(
    variants: list,
    evaluations: list,
    output_root: str,
    split: str,
    indexed: bool,
    report: Output[HTML],
    summary: Output[Markdown],
    best: Output[Metrics],
    run_id: str = "",
    registered_model: str = "",
    registered_alias: str = "",
) -> NamedTuple("Compared", variant=str, checkpoint=str, index=str, comparison=str,
                version=str):
    """Compare every variant of the study (``evaluations``: the collected evaluation URIs,
    one per variant, which this step waits for); select the best on validation MAP only.

    Writes the HTML ``report`` and Markdown ``summary`` (also as JSON, CSV, MD and HTML under
    ``<output_root>/comparison/``) and logs the best variant's metrics (``val_MAP``,
    ``test_R10@1``, ``test_paper_R10@1`` ...) to ``best``. Returns the best variant's name,
    checkpoint and index URIs and the comparison JSON's URI; ``registered_model`` (not "")
    registers that model as a new MLflow version (``registered_alias`` set only when given),
    returned as ``version``; ``run_id`` (the KFP run id) nests this step's MLflow run.
    """
    from collections import namedtuple
    from pathlib import Path

    from srs_core.study_report import compare_study, record_study

    names = [item["name"] for item in variants]
    if len(evaluations) != len(names):
        raise RuntimeError(f"compare: {len(evaluations)} evaluations for {len(names)} variants")
    done = compare_study(names, output_root, split=split, indexed=indexed)
    Path(report.path).write_text(done["html"], encoding="utf-8")
    Path(summary.path).write_text(done["markdown"], encoding="utf-8")
    compared = done["comparison"]
    for name, value in compared["best_metrics"].items():
        best.log_metric(name, value)
    version = record_study(done, variants, output_root, run_id, registered_model,
                           registered_alias)
    model = compared["model"]
    return namedtuple("Compared", "variant checkpoint index comparison version")(
        model["name"], model["checkpoint"], model["index"], done["uris"]["json"], version)
