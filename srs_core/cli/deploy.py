"""`srs deploy`: render (or apply) the KServe InferenceService of a run's checkpoint and index,
or of a version of a registered model."""

from __future__ import annotations

import argparse

from srs_core.cli import print_json
from srs_core.cli._common import seconds


def register(sub: argparse._SubParsersAction) -> None:
    deploy = sub.add_parser(
        "deploy", help="render or apply the KServe InferenceService of a model",
        description="Serve a checkpoint + library index (--checkpoint/--index) or a registered "
        "model (--registered-model NAME with --version N or --alias A, read from the MLflow "
        "registry at MLFLOW_TRACKING_URI); the object is labelled with the model and version.")
    model = deploy.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="URI of best.pt (with --index)")
    model.add_argument("--registered-model", metavar="NAME",
                       help="a model registered by a pipeline or study run")
    deploy.add_argument("--index", default="", help="URI of the sticker index")
    deploy.add_argument("--version", default="", help="registered model version")
    deploy.add_argument("--alias", default="", help="registered model alias, e.g. champion")
    deploy.add_argument("--out", required=True,
                        help="output root: the object goes to <out>/serving/inferenceservice.yaml")
    deploy.add_argument("--image", required=True, help="the serving image")
    deploy.add_argument("--name", default="srs-suggest", help="InferenceService name")
    deploy.add_argument("--namespace", default="", help="'' = the current namespace")
    deploy.add_argument("--apply", action="store_true",
                        help="also create or update it and wait for Ready")
    deploy.add_argument("--wait-seconds", type=seconds(), default=900.0,
                        help="how long --apply waits for Ready")
    deploy.set_defaults(func=_deploy)


def _deploy(args: argparse.Namespace) -> int:
    from srs_core.deploy import deploy_model, registered_model
    from srs_core.errors import ConfigError

    checkpoint, index, labels = args.checkpoint, args.index, {}
    if args.registered_model:
        checkpoint, index, labels = registered_model(args.registered_model, args.version,
                                                     args.alias)
    elif args.version or args.alias:
        raise ConfigError("--version/--alias select a version of --registered-model NAME")
    done = deploy_model("apply" if args.apply else "render", checkpoint, index, args.out,
                        args.image, name=args.name, namespace=args.namespace,
                        wait_seconds=args.wait_seconds, labels=labels)
    print_json({"manifest_uri": done["manifest_uri"], "labels": labels,
                "checkpoint": checkpoint, "index": index, "outcome": done["outcome"]})
    return 0
