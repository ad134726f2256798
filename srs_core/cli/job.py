"""`srs job render|run|local`: the training job as a manifest, on a cluster, or here.

``--kind pytorchjob`` (Training Operator v1) or ``--kind trainjob`` (Trainer v2, on the
``srs-torch`` ClusterTrainingRuntime of manifests/trainer); ``--queue`` puts it behind Kueue.

Train arguments follow ``--`` and are passed to ``srs_core.cli`` unchanged, e.g.
``srs job render --image IMG --workers 2 -- train --preset paper train.epochs=5``.
Defaults come from the ``SRS_JOB_*`` environment (the srs-defaults ConfigMap); flags win.
"""

from __future__ import annotations

import argparse
import os
import sys

from srs_core.cli import print_json
from srs_core.cli._common import NON_NEGATIVE, POSITIVE, seconds
from srs_core.errors import ConfigError
from srs_core.store.s3_config import SECRET_NAME


def _spec_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--name", help="job name (default: srs-train, or srs-train-<run id>)")
    add("--namespace", help="namespace (default: SRS_JOB_NAMESPACE or srs)")
    add("--image", help="container image with torch and this project (SRS_JOB_IMAGE)")
    add("--workers", type=POSITIVE, help="replicas in total, the Master included")
    add("--nproc-per-node", type=POSITIVE, help="processes per replica (default: GPUs, or 1)")
    add("--gpus-per-worker", type=NON_NEGATIVE, help="nvidia.com/gpu per replica")
    add("--cpu", help="CPU request per replica, e.g. 8")
    add("--memory", help="memory request (and limit) per replica, e.g. 64Gi")
    add("--cpu-limit", help="CPU limit (default: none)")
    add("--memory-limit", help="memory limit (default: the request)")
    add("--shm-size", help="size of the in-memory /dev/shm (default 8Gi)")
    add("--node-selector", action="append", default=[], metavar="KEY=VALUE",
        help="node selector label (repeatable)")
    add("--toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]",
        help="toleration, kubectl-taint syntax (repeatable)")
    add("--secret", dest="secret_name",
        help=f"Secret with SRS_S3_* keys (default {SECRET_NAME})")
    add("--service-account", help="ServiceAccount of the pods (default srs-trainer)")
    add("--nccl-socket-ifname", help="NCCL_SOCKET_IFNAME, e.g. eth0")
    add("--checkpoint", dest="checkpoint_uri", metavar="URI",
        help="checkpoint/output URI (train.output); a restarted pod resumes from it")
    add("--run-id", help="run id label (KFP run id); also names the job")
    add("--backoff-limit", type=NON_NEGATIVE, help="pod restarts before the job fails (default 3)")
    add("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env (repeatable)")
    add("--kind", choices=("pytorchjob", "trainjob"), default="pytorchjob",
        help="pytorchjob (Training Operator v1) or trainjob (Trainer v2); default pytorchjob")
    add("--queue", dest="queue_name", help="Kueue LocalQueue (SRS_JOB_QUEUE); the job is "
        "created suspended and Kueue admits it")
    add("--priority-class", help="Kueue WorkloadPriorityClass (needs --queue)")
    add("--runtime", help="trainjob: the ClusterTrainingRuntime (default srs-torch)")
    add("--job-owner", choices=("none", "step"), default="none",
        help="step: the pod in $SRS_POD_NAME/$SRS_POD_UID owns the job (deleted with it)")
    add("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN ARGS",
        help="arguments of srs_core.cli (default: train)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("job", help="render or run the training job (PyTorchJob or TrainJob), "
                            "or run it here")
    cmds = parser.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    render = cmds.add_parser("render", help="print the job's YAML (no cluster needed)")
    _spec_arguments(render)
    render.add_argument("--with-runtime", action="store_true",
                        help="trainjob: also print the ClusterTrainingRuntime it references")
    render.set_defaults(func=_render)

    run = cmds.add_parser("run", help="create (or adopt) the job and wait for it")
    _spec_arguments(run)
    run.add_argument("--timeout", type=seconds(), default=None, help="seconds to wait (default: "
                     "forever)")
    run.add_argument("--cleanup", choices=("always", "on-success", "never"),
                     default="on-success", help="delete the job at the end (default on-success)")
    run.add_argument("--replace-failed", action="store_true",
                     help="replace an existing Failed job of the same name instead of adopting")
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube)")
    run.add_argument("--context", help="kubeconfig context")
    run.add_argument("--poll-interval", type=seconds(), default=10.0, help="seconds between polls")
    run.add_argument("--pending-timeout", type=seconds(), default=None,
                     help="seconds the job may wait for nodes or admission before it fails with "
                     "the cluster's reasons (default: no limit but --timeout)")
    run.set_defaults(func=_run)

    local = cmds.add_parser("local", help="run the training entrypoint under torchrun here")
    local.add_argument("--nproc", type=POSITIVE, default=1, help="processes (default 1)")
    local.add_argument("--timeout", type=seconds(), default=None, help="seconds (default forever)")
    local.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN ARGS")
    local.set_defaults(func=_local)


def _train_args(args: argparse.Namespace) -> list[str]:
    rest = list(args.train_args or [])
    if rest and rest[0] == "--":
        rest = rest[1:]
    return rest or ["train"]


def spec_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None):
    """A JobSpec from the ``SRS_JOB_*`` environment, overridden by the command line."""
    from srs_core.launch import JobSpec, job_name, parse_key_values, parse_toleration, step_owner

    env = dict(os.environ if environ is None else environ)
    for item in args.env:
        if "=" not in item:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
    name = args.name or (job_name("srs-train", args.run_id) if args.run_id else None)
    spec = JobSpec.from_env(
        env, name=name, namespace=args.namespace, image=args.image, workers=args.workers,
        nproc_per_node=args.nproc_per_node, gpus_per_worker=args.gpus_per_worker,
        cpu=args.cpu, memory=args.memory, cpu_limit=args.cpu_limit,
        memory_limit=args.memory_limit, shm_size=args.shm_size,
        secret_name=args.secret_name, service_account=args.service_account,
        nccl_socket_ifname=args.nccl_socket_ifname, checkpoint_uri=args.checkpoint_uri,
        run_id=args.run_id, backoff_limit=args.backoff_limit, train_args=_train_args(args),
        env=dict(item.split("=", 1) for item in args.env) or None,
        queue_name=args.queue_name, priority_class=args.priority_class, runtime=args.runtime,
        owner=step_owner(env) if args.job_owner == "step" else None)
    if args.node_selector:
        spec.node_selector = parse_key_values(",".join(args.node_selector), "--node-selector")
    if args.toleration:
        spec.tolerations = [parse_toleration(t) for t in args.toleration]
    return spec.validate()


def _render(args: argparse.Namespace) -> int:
    from srs_core.launch import pytorchjob, trainjob

    spec = spec_from_args(args)
    if args.kind == "trainjob":
        sys.stdout.write(trainjob.render_yaml(spec, with_runtime=args.with_runtime))
    else:
        sys.stdout.write(pytorchjob.render_yaml(spec))
    return 0


def _run(args: argparse.Namespace) -> int:
    from srs_core.launch import kube_configuration, run_job

    outcome = run_job(
        spec_from_args(args), kind=args.kind, timeout=args.timeout, cleanup=args.cleanup,
        configuration=kube_configuration(args.kubeconfig, args.context),
        poll_interval=args.poll_interval, replace_failed=args.replace_failed,
        pending_timeout=args.pending_timeout)
    print_json(outcome.as_dict())
    return 0


def _local(args: argparse.Namespace) -> int:
    from srs_core.launch import run_local

    result = run_local(_train_args(args), nproc=args.nproc, timeout=args.timeout)
    if result.stdout:
        sys.stdout.write(result.stdout + "\n")
    return 0
