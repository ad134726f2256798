"""`srs pipeline ...`: compile, submit and run the KFP pipeline (plugged into `srs`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from srs_core.cli import print_json
from srs_core.errors import ConfigError

log = logging.getLogger("srs")
_PARAM_HELP = ("pipeline parameter, repeatable, e.g. --param epochs=2 --param "
               "overrides='train.max_steps=20' (see `srs pipeline params`)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pipeline", help="compile, submit or locally run the KFP pipeline")
    actions = parser.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)

    compile_ = actions.add_parser("compile", help="write the pipeline YAML for kfp / the UI")
    compile_.add_argument("--out", required=True, metavar="FILE", help="e.g. srs-pipeline.yaml")
    compile_.set_defaults(func=_compile)

    params = actions.add_parser("params", help="list the pipeline parameters and defaults")
    params.set_defaults(func=_params)

    submit = actions.add_parser(
        "submit", help="create a run on a Kubeflow Pipelines server (kfp.Client)",
        description="Compiles the pipeline (or takes --package) and creates a run. A bearer "
        "token, if the server needs one, is read from $SRS_KFP_TOKEN.",
    )
    submit.add_argument("--host", required=True, metavar="URL",
                        help="KFP API endpoint, e.g. http://localhost:8080 (port-forward)")
    submit.add_argument("--package", metavar="FILE", help="a compiled pipeline YAML to submit")
    submit.add_argument("--experiment", default="srs", help="experiment name (default srs)")
    submit.add_argument("--run-name", help="run name (default: package name and time)")
    submit.add_argument("--namespace", help="namespace of a multi-user Kubeflow")
    submit.add_argument("--service-account", default="srs-pipeline-runner",
                        help="service account of the run's steps, allowed to manage PyTorchJobs "
                        "(default srs-pipeline-runner from manifests/; '' = the cluster's)")
    submit.add_argument("--no-cache", action="store_true", help="disable caching for this run")
    submit.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help=_PARAM_HELP)
    submit.set_defaults(func=_submit)

    run = actions.add_parser(
        "run", help="run the whole pipeline on this machine (kfp.local)",
        description="Runs every step as a local subprocess with kfp.local, training with "
        "torchrun, and prints the test metrics. SIGTERM or SIGINT (Ctrl-C) cancels the run: "
        "the running step gets SIGTERM, whatever of the run is still running after "
        "$SRS_CANCEL_GRACE_SECONDS (default 30) is killed, no further step starts, and the "
        "command exits with 128 + the signal's number (143, 130) once no process of the run "
        "is left; a second signal kills at once.",
    )
    run.add_argument("--local", action="store_true", required=True,
                     help="run with kfp.local (the only mode; a cluster run is `submit`)")
    run.add_argument("--data", required=True, metavar="DIR",
                     help="directory with stickerchat/ and ser30k/ (e.g. from srs data synth)")
    run.add_argument("--out", default="runs/local", metavar="DIR",
                     help="step outputs and KFP artifacts (default runs/local)")
    run.add_argument("--preset", default="tiny", help="config preset (default tiny)")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help=_PARAM_HELP)
    run.set_defaults(func=_run)


def _compile(args: argparse.Namespace) -> int:
    from pipelines.runner import compile_pipeline

    path = compile_pipeline(args.out)
    sys.stdout.write(f"wrote {path}\n")
    return 0


def _params(args: argparse.Namespace) -> int:
    from pipelines.runner import pipeline_parameters

    print_json({name: {"type": kind.__name__, "default": default}
                for name, (kind, default) in pipeline_parameters().items()})
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pipelines.runner import parse_params, submit

    result = submit(
        args.host, parse_params(args.param), package=args.package, experiment=args.experiment,
        run_name=args.run_name, namespace=args.namespace,
        service_account=args.service_account or None,
        enable_caching=False if args.no_cache else None,
    )
    print_json(result)
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipelines.runner import PipelineCancelled, parse_params, run_locally

    params = parse_params(args.param)
    if "preset" in params and params["preset"] != args.preset:
        raise ConfigError("give the preset once: --preset or --param preset=..., not both")
    try:
        result = run_locally(args.data, args.out, {**params, "preset": args.preset})
    except PipelineCancelled as exc:
        log.error("%s", exc)
        return exc.exit_code
    print_json(result["metrics"])
    # Reports are files; metrics and the confusion matrix live in each step's metadata.
    lines = [f"KFP artifacts of this run: {result['run_dir']} (metadata: */executor_output.json)"]
    for task, outputs in result["artifacts"].items():
        lines += [f"  {task}/{name}: {artifact['uri']}" for name, artifact in outputs.items()
                  if Path(artifact["uri"]).is_file()]
    sys.stderr.write("\n".join(lines) + "\n")
    return 0
