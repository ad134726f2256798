"""Evaluate: score a split with the trained checkpoint; metrics and a report for the UI."""

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

from components._image import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(
    stickerchat: str,
    checkpoint: str,
    train_output: str,
    output_root: str,
    preset: str,
    overrides: str,
    split: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    library: str = "",
    run_id: str = "",
    registered_model: str = "",
    registered_alias: str = "",
    ends_pipeline: bool = True,
) -> str:
    """Score ``split`` (test by default; model selection used val) and log all 7 metrics
    under both protocols: ours as ``R10@1`` ..., the authors' as ``paper_R10@1`` ... (see
    ``srs_core.evaluate.PROTOCOLS``); the report adds the loss curves from ``train_output``.

    With ``library`` (a sticker index URI from ``srs index build``) the answers are also ranked
    among the whole library, logged as ``library_ita_R@10``, ``library_rerank50_MRR`` ...

    ``run_id`` (the KFP run id) nests this step's MLflow run under the pipeline run's;
    ``registered_model`` (not "") registers the checkpoint and ``library`` as a new version of
    that model in MLflow's registry, with the metrics and config as lineage, and points
    ``registered_alias`` (if given) at it; ``ends_pipeline``: this is the run's last tracked
    step (a study's variants are not).

    Returns the URI holding ``metrics.json`` and ``scores.jsonl``.
    """
    import shlex
    from pathlib import Path

    from srs_core.artifacts import RunOutputs
    from srs_core.config import load_config
    from srs_core.evaluate import evaluate as score_split
    from srs_core.metrics import METRIC_NAMES
    from srs_core.process import keep_freed_memory
    from srs_core.report import evaluation_report
    from srs_core.tracking import end_pipeline_run, log_evaluation, register_model, step_run

    keep_freed_memory()

    # The model config comes from the checkpoint; the data, limits and batch size from here.
    cfg = load_config([], [*shlex.split(overrides), f"data.stickerchat={stickerchat}"],
                      preset=preset)
    out = RunOutputs(output_root).evaluation(split).root
    with step_run(f"evaluate-{split}", output_root, run_id, {"srs.split": split}) as tracker:
        tracker.log_params(cfg.to_dict())
        results = score_split(cfg, checkpoint, split, out, library=library)
        page = evaluation_report(out, stickerchat, train_output=train_output)
        Path(report.path).write_text(page, encoding="utf-8")
        log_evaluation(tracker, results, out, split, checkpoint, (report.path,))
        if registered_model:
            register_model(registered_model, checkpoint, library, results, cfg.to_dict(), run_id,
                           run_id=tracker.run_id or None, alias=registered_alias or None,
                           root=output_root)
    if ends_pipeline:
        end_pipeline_run(run_id, output_root)
    for name in METRIC_NAMES:
        metrics.log_metric(name, float(results[name]))
    for name in METRIC_NAMES:
        metrics.log_metric(f"paper_{name}", float(results[f"paper_{name}"]))
    for name, value in results.items():  # present only when a library index was given
        if name.startswith("library_"):
            metrics.log_metric(name, float(value))
    return out
