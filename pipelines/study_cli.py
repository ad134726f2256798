"""`srs study ...`: run, compile or submit a study pipeline; render a sweep for Katib."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from srs_core.cli import print_json
from srs_core.cli._common import count
from srs_core.errors import ConfigError
from srs_core.study.variants import MAX_SEEDS

log = logging.getLogger("srs")
_STUDY_HELP = "'ablation' (the paper's rows, built in) or a study YAML file (variants:, sweep:)"
_PARAM_HELP = ("pipeline parameter, repeatable, as `srs pipeline run` takes them (see `srs "
               "pipeline params`), plus parallelism=N (variants in flight, 0 = no limit)")


def _study_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--study", required=required, default="ablation", metavar="NAME|FILE",
                        help=_STUDY_HELP + ("" if required else " (default ablation)"))
    parser.add_argument("--seeds", type=count(1, MAX_SEEDS), metavar="N",
                        help="repeat every variant with N seeds (default: the file's, else 1)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help=_PARAM_HELP)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("study", help="run a study (ablation, variants, sweep) as one "
                            "pipeline, or render a sweep for Katib")
    actions = parser.add_subparsers(dest="study_command", metavar="ACTION", required=True)

    run = actions.add_parser(
        "run", help="run a study on this machine (kfp.local)",
        description="Runs the shared steps once, then trains and evaluates every variant, "
        "then compares them (best on validation MAP); prints the comparison's summary. "
        "Cancelling works as for `srs pipeline run`.")
    run.add_argument("--local", action="store_true", required=True,
                     help="run with kfp.local (the only mode; a cluster run is `submit`)")
    run.add_argument("--data", required=True, metavar="DIR",
                     help="directory with stickerchat/ and ser30k/ (e.g. from srs data synth)")
    run.add_argument("--out", default="runs/study", metavar="DIR",
                     help="the study's output root (default runs/study)")
    run.add_argument("--preset", default="tiny", help="config preset (default tiny)")
    _study_arguments(run)
    run.set_defaults(func=_run)

    compile_ = actions.add_parser("compile", help="write the study pipeline's YAML")
    compile_.add_argument("--out", required=True, metavar="FILE", help="e.g. srs-study.yaml")
    _study_arguments(compile_, required=False)
    compile_.set_defaults(func=_compile)

    submit = actions.add_parser("submit", help="create a study run on a KFP server",
                                description="As `srs pipeline submit`, for the study "
                                "pipeline; the token is read from $SRS_KFP_TOKEN.")
    submit.add_argument("--host", required=True, metavar="URL", help="KFP API endpoint")
    submit.add_argument("--experiment", default="srs", help="experiment name (default srs)")
    submit.add_argument("--run-name", help="run name (default: package name and time)")
    submit.add_argument("--namespace", help="namespace of a multi-user Kubeflow")
    submit.add_argument("--service-account", default="srs-pipeline-runner",
                        help="service account of the run's steps (default srs-pipeline-runner)")
    submit.add_argument("--no-cache", action="store_true", help="disable caching for this run")
    _study_arguments(submit)
    submit.set_defaults(func=_submit)

    render = actions.add_parser("render", help="print a study file's sweep as a Katib "
                                "Experiment (YAML) whose trials are TrainJobs")
    render.add_argument("--kind", required=True, choices=["katib"], help="what to render")
    render.add_argument("--image", required=True, help="the trials' training image")
    render.add_argument("--study", required=True, metavar="FILE", help="a study file with sweep:")
    render.add_argument("--output", metavar="URI",
                        help="under which each trial writes (default s3://srs-runs/sweeps/NAME)")
    render.add_argument("--name", help="experiment name (default srs-<file stem>)")
    render.add_argument("--namespace", default="srs", help="namespace (default srs)")
    render.add_argument("--queue", help="Kueue LocalQueue of the trials")
    render.add_argument("--preset", help="config preset of every trial")
    render.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        dest="overrides", help="a setting every trial shares (data URIs, "
                        "teacher, anchors), repeatable")
    render.set_defaults(func=_render)


def _study_run(args: argparse.Namespace, preset: str | None = None
               ) -> tuple[Any, dict[str, Any]]:
    """(the study pipeline, its arguments) from --study, --seeds and --param."""
    from pipelines.runner import parse_params
    from pipelines.study import DEFAULT_PARALLELISM, make_study_pipeline, study_pipeline
    from srs_core.study import load_study
    from srs_core.study.run import pipeline_items, variant_run

    pairs = [p for p in args.param if not p.startswith("parallelism=")]
    parallelism = _parallelism(args.param)
    params = parse_params(pairs, study_pipeline)
    if preset is not None:
        if "preset" in params and params["preset"] != preset:
            raise ConfigError("give the preset once: --preset or --param preset=..., not both")
        params["preset"] = preset
    defaults = {name: spec.default for name, spec in
                study_pipeline.component_spec.inputs.items()}
    run = {**defaults, **params}
    study = load_study(args.study, args.seeds, run["preset"], shlex.split(run["overrides"]))
    items = pipeline_items(study)
    for item in items:  # every variant as its step will resolve it, before anything runs
        variant_run(item, str(run["output_root"]), run["preset"], run["overrides"],
                    run["epochs"], run["batch_size"])
    if parallelism is None:
        parallelism = study.sweep.parallelism if study.sweep is not None else DEFAULT_PARALLELISM
    # The study's variants are also the compiled pipeline's defaults (seen in the KFP UI).
    pipeline = make_study_pipeline(parallelism, variants=items, study_name=study.name)
    return pipeline, {**params, "variants": items, "study_name": study.name}


def _parallelism(pairs: list[str]) -> int | None:
    values = [p.partition("=")[2] for p in pairs if p.startswith("parallelism=")]
    if not values:
        return None
    try:
        value = int(values[-1])
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"--param parallelism={values[-1]}: expected an integer >= 0 "
                          "(0 = every variant at once)")
    return value


def _run(args: argparse.Namespace) -> int:
    from pipelines.runner import PipelineCancelled, run_locally

    pipeline, arguments = _study_run(args, preset=args.preset)
    try:
        result = run_locally(args.data, args.out, arguments, pipeline=pipeline)
    except PipelineCancelled as exc:
        log.error("%s", exc)
        return exc.exit_code
    from srs_core.study_report import COMPARISON_DIR

    reports = Path(args.out).resolve() / COMPARISON_DIR
    compared = json.loads((reports / "comparison.json").read_text(encoding="utf-8"))
    print_json({"best": compared["best"], "selected_on": "val_MAP",
                "best_metrics": compared["best_metrics"], "model": compared["model"],
                "reports": {p.suffix[1:]: str(p) for p in sorted(reports.glob("comparison.*"))}})
    sys.stderr.write(f"KFP artifacts of this run: {result['run_dir']}\n")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from pipelines.runner import compile_pipeline

    pipeline, arguments = _study_run(args)
    if any(name not in ("variants", "study_name") for name in arguments):
        raise ConfigError("srs study compile takes --study, --seeds and --param parallelism=N; "
                          "give run parameters when you submit or run")
    path = compile_pipeline(args.out, pipeline)
    sys.stdout.write(f"wrote {path}\n")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pipelines.runner import submit

    pipeline, arguments = _study_run(args)
    result = submit(args.host, arguments, experiment=args.experiment, run_name=args.run_name,
                    namespace=args.namespace, service_account=args.service_account or None,
                    enable_caching=False if args.no_cache else None, pipeline=pipeline)
    print_json(result)
    return 0


def _render(args: argparse.Namespace) -> int:
    from srs_core.study.katib import experiment_name, render_katib_yaml

    name = args.name or experiment_name(Path(args.study).stem)
    text = render_katib_yaml(args.study, args.image, output=args.output or
                             f"s3://srs-runs/sweeps/{name}", name=name, preset=args.preset,
                             overrides=args.overrides, namespace=args.namespace,
                             queue=args.queue)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
