"""Compile the pipeline, submit it to a Kubeflow Pipelines server, or run it on this machine."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from srs_core.artifacts import DataRoots
from srs_core.errors import ConfigError, JobError
from srs_core.metrics import METRIC_NAMES
from srs_core.process import ProcessEntry, ProcessSet, descendants, has_environment, process_table

log = logging.getLogger(__name__)

# A bearer token for a KFP server behind authentication; read from the environment only, so
# that it never shows in shell history, process lists or logs.
TOKEN_ENV = "SRS_KFP_TOKEN"
LOCAL_DEFAULTS = {"preset": "tiny", "training_backend": "local", "gpus_per_node": 1}
# The evaluation step's Metrics artifact, in the protocol's order (DESIGN.md section 4): ours
# (strict) first, then the authors' protocol's under "paper_".
RANK_METRICS = (*METRIC_NAMES, *(f"paper_{name}" for name in METRIC_NAMES))
_TYPES = {"String": str, "Integer": int, "Boolean": bool, "Float": float}
# A cancelled local run (SIGTERM or SIGINT to `srs pipeline run --local`) gives its running
# step this long to stop after passing it SIGTERM, then kills every process of the run left.
CANCEL_GRACE_ENV = "SRS_CANCEL_GRACE_SECONDS"
DEFAULT_CANCEL_GRACE = 30.0
# Set in the environment of every step of a local run (a fresh value per run): finds the run's
# processes even where they left the process tree (torchrun in its own session, orphans).
RUN_MARK_ENV = "SRS_LOCAL_PIPELINE_RUN"


def _main_pipeline() -> Any:
    from pipelines.pipeline import srs_pipeline

    return srs_pipeline


def pipeline_parameters(pipeline: Any = None) -> dict[str, tuple[type, Any]]:
    """Name -> (Python type, default) of every parameter of ``pipeline`` (default: the main
    pipeline; list and dict parameters are left out: no ``--param`` sets them)."""
    inputs = (pipeline or _main_pipeline()).component_spec.inputs
    return {name: (_TYPES[spec.type], spec.default) for name, spec in inputs.items()
            if spec.type in _TYPES}


def parse_params(pairs: Iterable[str], pipeline: Any = None) -> dict[str, Any]:
    """``name=value`` strings -> typed pipeline arguments; unknown names are a ConfigError."""
    known = pipeline_parameters(pipeline)
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ConfigError(f"--param {pair!r}: expected name=value")
        if name not in known:
            raise ConfigError(f"--param {pair!r}: unknown parameter {name!r} "
                              f"(known: {', '.join(sorted(known))})")
        kind = known[name][0]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError(text)
                params[name] = text.lower() == "true"
            else:
                params[name] = kind(text)
        except ValueError:
            raise ConfigError(f"--param {pair!r}: {name} expects {kind.__name__}") from None
    from pipelines.pipeline import BACKENDS, DEPLOY_MODES, JOB_CLEANUP, JOB_OWNERS

    for name, choices in (("training_backend", BACKENDS), ("job_cleanup", JOB_CLEANUP),
                          ("job_owner", JOB_OWNERS), ("deploy", DEPLOY_MODES)):
        if name in params and params[name] not in choices:
            raise ConfigError(f"--param {name} must be one of {', '.join(choices)}")
    return params


def check_parameters(params: Mapping[str, Any], pipeline: Any = None) -> None:
    """Refuse out-of-range run parameters (the config's rules) before anything runs; the
    pipeline's validate step repeats this for runs started from the Kubeflow UI."""
    from srs_core.config import check_run_parameters

    values = {name: default for name, (_, default) in pipeline_parameters(pipeline).items()}
    values.update(params)
    if values.get("deploy", "none") != "none" and not values["build_index"]:
        raise ConfigError(f"--param deploy={values['deploy']} serves the sticker index: it "
                          "needs build_index=true")
    check_run_parameters(**{name: values[name] for name in RUN_PARAMETERS})


# The pipeline parameters that check_run_parameters judges (also inputs of the validate step).
RUN_PARAMETERS = ("preset", "overrides", "anchors_k", "epochs", "batch_size", "train_nodes",
                  "gpus_per_node", "eval_split", "train_timeout_hours", "sentiment_workers")


def compile_pipeline(out: str | Path, pipeline: Any = None) -> Path:
    """Write the YAML (KFP IR) of ``pipeline`` (default: the main pipeline) to ``out``."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline or _main_pipeline(), str(out))
    return out


def submit(
    host: str,
    params: Mapping[str, Any] | None = None,
    package: str | Path | None = None,
    experiment: str = "srs",
    run_name: str | None = None,
    namespace: str | None = None,
    service_account: str | None = None,
    enable_caching: bool | None = None,
    pipeline: Any = None,
) -> dict[str, str]:
    """Create a run on the KFP server at ``host`` (compiling ``pipeline``, default the main
    one, unless ``package`` names a compiled one); returns its run and experiment ids."""
    import kfp

    check_parameters(params or {}, pipeline)
    token = os.environ.get(TOKEN_ENV) or None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(package) if package else compile_pipeline(Path(tmp) / "srs-pipeline.yaml",
                                                              pipeline)
        # kfp prints links to stdout; keep stdout for our JSON result.
        with contextlib.redirect_stdout(sys.stderr):
            try:
                client = kfp.Client(host=host, existing_token=token)
                result = client.create_run_from_pipeline_package(
                    str(path), arguments=dict(params or {}), run_name=run_name,
                    experiment_name=experiment, namespace=namespace,
                    service_account=service_account, enable_caching=enable_caching,
                )
            except Exception as exc:  # the client raises ApiException, urllib3, TimeoutError...
                raise JobError(f"submitting to {host} failed: {type(exc).__name__}: "
                               f"{_first_line(exc)}") from exc
    run = result.run_info
    return {"run_id": run.run_id, "experiment_id": run.experiment_id or "",
            "url": f"{host.rstrip('/')}/#/runs/details/{run.run_id}"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def run_locally(
    data_dir: str | Path, out_dir: str | Path, params: Mapping[str, Any] | None = None,
    pipeline: Any = None,
) -> dict[str, Any]:
    """Run the whole pipeline (``pipeline``, default the main one) on this machine with
    ``kfp.local`` (one subprocess per step, training with torchrun); returns the test metrics,
    everything the returned Metrics artifact logged, and where the KFP artifacts are.

    ``data_dir`` holds ``stickerchat/`` and ``ser30k/`` (e.g. from ``srs data synth``);
    step outputs go to ``<out>/<step>`` and KFP's artifacts to ``<out>/kfp``.
    """
    from kfp import local
    from kfp.local import pipeline_orchestrator

    pipeline = pipeline or _main_pipeline()
    data, out = Path(data_dir).resolve(), Path(out_dir).resolve()
    roots = DataRoots(str(data))
    for part in (roots.stickerchat, roots.ser30k):
        if not Path(part).is_dir():
            raise ConfigError(f"{part} does not exist: --data must hold stickerchat/ and "
                              f"ser30k/ (make demo data with `srs data synth --out {data}`)")
    arguments = {**LOCAL_DEFAULTS, "stickerchat_uri": roots.stickerchat,
                 "ser30k_uri": roots.ser30k, "output_root": str(out), **(params or {})}
    if arguments["training_backend"] != "local":
        raise ConfigError("a local run trains with training_backend=local (no cluster here)")
    check_parameters(arguments, pipeline)
    grace = cancel_grace_seconds()
    kfp_root = out / "kfp"
    kfp_root.mkdir(parents=True, exist_ok=True)
    before = set(kfp_root.iterdir())
    # use_venv=False: the steps run in this environment, where srs_core is installed.
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(kfp_root),
               raise_on_error=True)
    # kfp.local prints the steps' logs to stdout; stdout is for the metrics.
    with _StepStopper(grace) as stopper, _loop_inputs_kept(), _one_tracking_store(out):
        try:
            with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
                # Expected here: cluster settings (resources, GPUs) do nothing on one machine,
                # and the steps run in this environment, not in the components' images.
                warnings.filterwarnings("ignore", message=".*have no effect in the current local")
                warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
                outputs = pipeline_orchestrator.run_local_pipeline(
                    pipeline_spec=_without_retries(pipeline.pipeline_spec),
                    arguments=arguments)
        except RuntimeError as exc:  # kfp.local names the failed task; its log is above
            stopper.raise_if_cancelled()
            raise JobError(f"local pipeline run failed: {_plain(str(exc))} (step outputs: "
                           f"{kfp_root})") from None
        stopper.raise_if_cancelled()
    runs = sorted(set(kfp_root.iterdir()) - before)
    run_dir = runs[-1] if runs else None
    logged = outputs["Output"].metadata
    metrics = {name: logged[name] for name in RANK_METRICS if name in logged}
    return {"metrics": metrics, "logged": dict(logged), "run_dir": str(run_dir),
            "artifacts": _artifacts(run_dir)}


@contextlib.contextmanager
def _loop_inputs_kept() -> Iterator[None]:
    """Work around kfp.local 2.17.0 for ``dsl.ParallelFor``: building a loop iteration, it
    replaces EVERY input of the loop that is an upstream task's output with the loop item (a
    study's variants would get the variant dict as their data URI). Inputs other than the
    iterated items get their original spec back; the items input is left as kfp sets it."""
    from kfp.local.orchestrator import task_spec_utils

    build = task_spec_utils.create_parameter_loop_iteration_task_spec

    def iteration(original: Any, loop_item: Any, loop_task_name: str) -> Any:
        spec = build(original, loop_item, loop_task_name)
        items = original.parameter_iterator.items.input_parameter
        for name, source in original.inputs.parameters.items():
            if source.HasField("task_output_parameter") and name != items:
                spec.inputs.parameters[name].CopyFrom(source)
        return spec

    task_spec_utils.create_parameter_loop_iteration_task_spec = iteration
    try:
        yield
    finally:
        task_spec_utils.create_parameter_loop_iteration_task_spec = build


def _without_retries(spec: Any) -> Any:
    """A copy of the pipeline spec without retry policies: on one machine a retry repeats the
    same failure after minutes of backoff (the store itself retries network errors)."""
    from kfp.pipeline_spec import pipeline_spec_pb2

    copy = pipeline_spec_pb2.PipelineSpec()
    copy.CopyFrom(spec)
    dags = [copy.root.dag] + [c.dag for c in copy.components.values() if c.HasField("dag")]
    for dag in dags:
        for task in dag.tasks.values():
            task.ClearField("retry_policy")
    return copy


def _plain(text: str) -> str:
    """Without the terminal colour codes kfp.local puts in its messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _artifacts(run_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Per task and output: the artifact's file and metadata, from the executor outputs (a
    task inside a ParallelFor iteration as ``for-loop-1-iteration-0/evaluate``)."""
    found: dict[str, dict[str, Any]] = {}
    if run_dir is None:
        return found
    for output_file in sorted(run_dir.rglob("executor_output.json")):
        outputs = json.loads(output_file.read_text()).get("artifacts", {})
        task = output_file.parent.relative_to(run_dir).as_posix()
        for name, entry in outputs.items():
            for artifact in entry.get("artifacts", []):
                found.setdefault(task, {})[name] = {
                    "uri": artifact.get("uri", ""), "metadata": artifact.get("metadata", {})}
    return found


# --- cancelling a local run -------------------------------------------------------------------


class PipelineCancelled(Exception):
    """A local run stopped by SIGTERM or SIGINT; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


def cancel_grace_seconds() -> float:
    """``$SRS_CANCEL_GRACE_SECONDS`` (default 30): a cancelled step's time to stop."""
    text = os.environ.get(CANCEL_GRACE_ENV, "").strip()
    if not text:
        return DEFAULT_CANCEL_GRACE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:  # also refuses nan
        raise ConfigError(f"${CANCEL_GRACE_ENV}={text!r}: expected seconds from 0 to 86400")
    return value


class _StepStopper:
    """While a local run goes on, SIGTERM or SIGINT to this process (a container stop, a KFP
    cancel, Ctrl-C) is passed on as SIGTERM to the running step; whatever of the run still
    runs ``grace`` seconds later is killed, no further step starts, and the run ends with
    :class:`PipelineCancelled` once no process of it is left.

    kfp.local starts each step (``sh -ec`` running ``kfp.dsl.executor_main``) as a child of
    this process, in its process group, and in-step training starts torchrun in a session of
    its own: a signal to this one process alone would leave them all running, orphaned. The
    run's processes are found in /proc as this process's descendants and by a mark in their
    environment (which also finds those that left the tree), each remembered by pid and start
    time. A second signal kills at once. Signal handlers need the main thread; elsewhere
    nothing is installed.
    """

    def __init__(self, grace: float):
        self.grace = grace
        self.token = uuid.uuid4().hex
        self.signum: int | None = None
        self.processes = ProcessSet()
        self.killed = 0
        self._reported = False
        self._me = os.getpid()
        self._unmarked: set[tuple[int, int]] = set()
        self._hurry = threading.Event()
        self._stopped = threading.Event()
        self._finished = threading.Event()
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> _StepStopper:
        from kfp.local import subprocess_task_handler

        previous_mark = os.environ.get(RUN_MARK_ENV)
        os.environ[RUN_MARK_ENV] = self.token
        self._undo.append(lambda: _restore_env(RUN_MARK_ENV, previous_mark))
        start_step = subprocess_task_handler.run_local_subprocess

        def run_step(*args: Any, **kwargs: Any) -> int:
            if self.signum is not None:  # cancelled between two steps: start no other
                log.warning("cancelled: not starting the next step")
                return 128 + self.signum
            return start_step(*args, **kwargs)

        subprocess_task_handler.run_local_subprocess = run_step
        self._undo.append(lambda: setattr(subprocess_task_handler, "run_local_subprocess",
                                          start_step))
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous = signal.signal(signum, self._on_signal)
                self._undo.append(lambda s=signum, p=previous: signal.signal(s, p))
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()
        self._finished.set()
        if self.signum is not None:  # whatever ended the block: leave nothing running
            self._stopped.wait(self.grace + 30)
            if kind is None and not self._reported:  # the signal came after the last step
                self.raise_if_cancelled()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            log.warning("received %s again: killing the run's processes now",
                        signal.Signals(signum).name)
            self._hurry.set()
            return
        self.signum = signum
        self._track()
        # A step is kfp's `sh -ec` and the `kfp.dsl.executor_main` it starts, both in our
        # process group: they get the signal, as from a terminal. A process that made a group
        # of its own (torchrun) is stopped by its step, or as an orphan when the step is gone.
        alive = self.processes.alive()
        steps = [entry for entry in alive if entry.group == os.getpgrp()]
        log.warning("received %s: passing SIGTERM to the %d running step(s) (%d processes); "
                    "whatever of the run is left after %gs ($%s) is killed",
                    signal.Signals(signum).name, sum(e.ppid == self._me for e in alive),
                    len(steps), self.grace, CANCEL_GRACE_ENV)
        ProcessSet.signal(steps, signal.SIGTERM)
        threading.Thread(target=self._stop, args=({e.pid for e in steps},), daemon=True,
                         name="srs-cancel").start()

    def _track(self) -> None:
        """Remember every process of the run now running."""
        table = process_table()
        mine = descendants(self._me, table)
        for pid, entry in table.items():
            if pid == self._me or pid in mine or (pid, entry.start) in self._unmarked:
                continue
            if has_environment(pid, RUN_MARK_ENV, self.token):
                mine.add(pid)
            else:
                self._unmarked.add((pid, entry.start))
        self.processes.add([table[pid] for pid in mine if pid in table])

    def _stop(self, signalled: set[int]) -> None:
        deadline = time.monotonic() + self.grace
        try:
            while True:
                self._track()
                alive = self.processes.alive()
                if not alive:
                    break
                if self._hurry.is_set() or time.monotonic() >= deadline:
                    self._kill(alive)
                    break
                # a process whose step has ended (torchrun, workers): pass the signal on to it
                running = {entry.pid for entry in alive} | {self._me}
                orphans = [e for e in alive if e.ppid not in running and e.pid not in signalled]
                ProcessSet.signal(orphans, signal.SIGTERM)
                signalled.update(e.pid for e in orphans)
                self._hurry.wait(0.1)
        finally:
            self._stopped.set()
        # Only a process that escaped both the tree and the mark (holding the step's output
        # pipe open) can keep the main thread waiting now: end the run anyway.
        if not self._finished.wait(15) and self.signum is not None:
            log.error("cancelled: the run did not finish 15s after its processes ended; exiting")
            logging.shutdown()
            os._exit(128 + self.signum)

    def _kill(self, alive: list[ProcessEntry]) -> None:
        log.warning("%d process(es) of the run still running %s: killing them (SIGKILL)",
                    len(alive), "on a second signal" if self._hurry.is_set()
                    else f"{self.grace:g}s after SIGTERM")
        self.killed = len(alive)
        ProcessSet.signal(alive, signal.SIGKILL)
        until = time.monotonic() + 10
        while self.processes.alive() and time.monotonic() < until:
            time.sleep(0.05)

    def raise_if_cancelled(self) -> None:
        """After the orchestrator returned: PipelineCancelled once the run's processes ended."""
        if self.signum is None:
            return
        self._reported = True
        self._stopped.wait(self.grace + 30)
        left = self.processes.alive()
        name = signal.Signals(self.signum).name
        how = f", {self.killed} killed after {self.grace:g}s" if self.killed else ""
        raise PipelineCancelled(
            self.signum, f"local pipeline run cancelled by {name}: its steps were stopped"
            f"{how}" + (f"; still running: {sorted(e.pid for e in left)}" if left else ""))


@contextlib.contextmanager
def _one_tracking_store(out: Path) -> Iterator[None]:
    """Every step of a local run (a study's variants too, whose outputs lie deeper) tracks
    into one MLflow store, ``<out>/mlflow.db``, unless ``MLFLOW_TRACKING_URI`` says where."""
    from srs_core.tracking.session import URI_ENV, tracking_uri

    before = os.environ.get(URI_ENV)
    uri = before or tracking_uri(str(out))
    if uri:
        os.environ[URI_ENV] = uri
    try:
        yield
    finally:
        _restore_env(URI_ENV, before)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
