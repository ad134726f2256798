"""A study's sweep as a Katib ``Experiment`` (``kubeflow.org/v1beta1``) whose trials are TrainJobs.

Built with the ``kubeflow_katib_api`` models and serialised with their Kubernetes (camelCase)
field names. Each trial is the TrainJob of :mod:`srs_core.launch.trainjob` (same image, pod,
runtime and Kueue queue as ``srs job``) running ``srs train [--preset P] <overrides>
section.key=${trialParameters.<name>} ...``, writing to ``<output>/<trial name>``.

- Search space: a list is ``categorical`` (``discrete`` for a float setting; int lists stay
  categorical so that ``4`` is never passed on as ``4.0``), each value written as the YAML text
  ``section.key=`` parses back; a range is ``int`` or ``double`` with ``min``/``max`` and
  distribution ``uniform`` (linear) or ``logUniform`` (log). ``grid`` and ``random`` map to the
  Katib algorithms of the same names; ``maxTrialCount`` = the sweep's size,
  ``parallelTrialCount`` = its ``parallelism``.
- Objective: ``val_MAP``, maximize, strategy ``max`` (the best validation, as ``best.pt``).
- Metrics: Katib's ``StdOut`` collector on rank 0's ``node`` container, filtered by
  :data:`METRIC_FORMAT`. Training prints :func:`metric_line` after each validation, one
  metric a line: ``srs-metric val_MAP=0.8123`` (``<split>_<metric as srs evaluate names
  it>``); the ``srs-metric`` prefix keeps other ``name=value`` log lines out.

The cluster's ``katib-config`` must list ``TrainJob.v1alpha1.trainer.kubeflow.org`` among its
trial resources, and the namespace carry ``katib.kubeflow.org/metrics-collector-injection:
enabled``. Katib names each trial; seeds and a file's ``variants:`` are pipeline studies only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srs_core.errors import ConfigError
from srs_core.launch.schema import dump_yaml
from srs_core.launch.spec import JobSpec
from srs_core.launch.trainjob import (
    CONTAINER,
    INDEX_LABEL,
    REPLICATED_JOB,
    REPLICATED_JOB_LABEL,
    render_trainjob,
)
from srs_core.metrics import METRIC_FORMAT, METRIC_PREFIX, metric_line
from srs_core.study.sweep import Parameter, Sweep
from srs_core.study.variants import format_value, load_study

API_VERSION = "kubeflow.org/v1beta1"
KIND = "Experiment"
OBJECTIVE_METRIC = "val_MAP"
TRIAL_NAME = "trialName"  # the trial parameter that Katib fills with the trial's name
SUCCESS = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
FAILURE = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
ALGORITHMS = {"grid": "grid", "random": "random"}
__all__ = ["METRIC_FORMAT", "METRIC_PREFIX", "metric_line", "render_katib_experiment",
           "render_katib_yaml"]
STUDY_LABEL = "srs-kubeflow/study"
# Trial names are "<experiment>-<8 characters>"; TrainJob/JobSet/pod names grow from there.
_EXPERIMENT_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,28}[a-z0-9])?$")


def parameter_name(key: str) -> str:
    """The Katib parameter of setting ``section.key``: ``train.lr`` -> ``train-lr``."""
    return key.replace(".", "-").replace("_", "-")


def _parameter_spec(p: Parameter) -> Any:
    from kubeflow_katib_api.models import V1beta1FeasibleSpace, V1beta1ParameterSpec

    if p.values is not None:
        kind = "discrete" if p.kind is float else "categorical"
        space = V1beta1FeasibleSpace(list=[format_value(v) for v in p.values])
    else:
        kind = "int" if p.kind is int else "double"
        space = V1beta1FeasibleSpace(
            min=format_value(p.min), max=format_value(p.max),
            distribution="logUniform" if p.scale == "log" else "uniform")
    return V1beta1ParameterSpec(name=parameter_name(p.key), parameter_type=kind,
                                feasible_space=space)


def trial_trainjob(sweep: Sweep, job: JobSpec, output: str, preset: str | None = None,
                   overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The trial template: the TrainJob of ``job`` running one trial's ``srs train``."""
    placeholders = [f"{p.key}=${{trialParameters.{parameter_name(p.key)}}}"
                    for p in sweep.parameters]
    args = ["train", *(["--preset", preset] if preset else []), *overrides, *placeholders]
    trial = f"${{trialParameters.{TRIAL_NAME}}}"
    spec = job.with_overrides(train_args=args, checkpoint_uri=f"{output.rstrip('/')}/{trial}")
    manifest = render_trainjob(spec)
    for key in ("name", "namespace"):  # Katib names each trial and puts it in its namespace
        manifest["metadata"].pop(key, None)
    for var in manifest["spec"]["trainer"]["env"]:
        if var["name"] == "SRS_JOB_NAME":
            var["value"] = trial
    return manifest


def _trial_template(sweep: Sweep, manifest: dict[str, Any]) -> Any:
    from kubeflow_katib_api.models import V1beta1TrialParameterSpec, V1beta1TrialTemplate

    params = [V1beta1TrialParameterSpec(name=parameter_name(p.key), reference=parameter_name(
        p.key), description=p.key) for p in sweep.parameters]
    params.append(V1beta1TrialParameterSpec(name=TRIAL_NAME, reference="${trialSpec.Name}",
                                            description="the trial's name"))
    return V1beta1TrialTemplate(
        primary_container_name=CONTAINER,
        primary_pod_labels={REPLICATED_JOB_LABEL: REPLICATED_JOB, INDEX_LABEL: "0"},
        success_condition=SUCCESS, failure_condition=FAILURE, retain=False,
        trial_parameters=params, trial_spec=manifest)


def _objective(goal: float | None, additional: Sequence[str]) -> Any:
    from kubeflow_katib_api.models import V1beta1MetricStrategy, V1beta1ObjectiveSpec

    names = [OBJECTIVE_METRIC, *additional]
    return V1beta1ObjectiveSpec(
        type="maximize", goal=goal, objective_metric_name=OBJECTIVE_METRIC,
        additional_metric_names=list(additional) or None,
        metric_strategies=[V1beta1MetricStrategy(name=n, value="max") for n in names])


def _collector() -> Any:
    from kubeflow_katib_api.models import (
        V1beta1CollectorSpec,
        V1beta1FilterSpec,
        V1beta1MetricsCollectorSpec,
        V1beta1SourceSpec,
    )

    return V1beta1MetricsCollectorSpec(
        collector=V1beta1CollectorSpec(kind="StdOut"),
        source=V1beta1SourceSpec(filter=V1beta1FilterSpec(metrics_format=[METRIC_FORMAT])))


def render_katib_experiment(
    sweep: Sweep, image: str, namespace: str = "srs", queue: str | None = None, *,
    output: str, name: str = "srs-sweep", preset: str | None = None,
    overrides: Sequence[str] = (), job: JobSpec | None = None, goal: float | None = None,
    additional_metrics: Sequence[str] = (),
) -> dict[str, Any]:
    """The Katib Experiment of ``sweep`` as a plain dict (Kubernetes field names).

    ``output``: URI under which each trial writes (``<output>/<trial name>``); ``overrides``:
    ``section.key=value`` settings every trial shares (data URIs, teacher, anchors); ``job``:
    the resources and placement of each trial (default :class:`JobSpec`'s).
    """
    from kubeflow_katib_api.models import (
        IoK8sApimachineryPkgApisMetaV1ObjectMeta,
        V1beta1AlgorithmSpec,
        V1beta1Experiment,
        V1beta1ExperimentSpec,
    )

    if not _EXPERIMENT_NAME.match(name):
        raise ConfigError(f"Katib experiment name {name!r} must be 1-30 of a-z 0-9 '-', "
                          "starting with a letter")
    if not output.strip():
        raise ConfigError("Katib experiment: give an output URI under which each trial writes "
                          "its checkpoints (e.g. s3://bucket/sweeps/NAME)")
    base = job or JobSpec(name=name, image=image)
    job_spec = base.with_overrides(name=name, image=image, namespace=namespace,
                                   queue_name=queue, labels={**base.labels, STUDY_LABEL: name})
    manifest = trial_trainjob(sweep, job_spec, output, preset, overrides)
    experiment = V1beta1Experiment(
        api_version=API_VERSION, kind=KIND,
        metadata=IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, namespace=namespace,
            labels={"app.kubernetes.io/name": "srs", "app.kubernetes.io/component": "study"}),
        spec=V1beta1ExperimentSpec(
            algorithm=V1beta1AlgorithmSpec(algorithm_name=ALGORITHMS[sweep.method]),
            objective=_objective(goal, additional_metrics),
            metrics_collector_spec=_collector(),
            parameters=[_parameter_spec(p) for p in sweep.parameters],
            max_trial_count=sweep.size, parallel_trial_count=sweep.parallelism,
            trial_template=_trial_template(sweep, manifest)))
    return experiment.to_dict()


def experiment_name(study_name: str) -> str:
    """A valid default experiment name for a study file's stem: ``srs-<stem>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", study_name.lower()).strip("-")
    return f"srs-{slug}"[:30].rstrip("-")


def render_katib_yaml(study_file: str | Path, image: str, *, output: str,
                      name: str | None = None, preset: str | None = None,
                      overrides: Sequence[str] = (), **options: Any) -> str:
    """``srs study render --kind katib``: a study file's sweep as the Experiment's YAML."""
    study = load_study(study_file, preset=preset, base=overrides)
    if study.seeds > 1:
        raise ConfigError(f"{study_file}: seeds: {study.seeds} repeats a pipeline study's "
                          "variants; a Katib trial is one point (sweep train.seed instead)")
    if study.sweep is None:
        raise ConfigError(f"{study_file}: no sweep: to render as a Katib experiment (Katib "
                          "searches a sweep; run variants as a pipeline study)")
    experiment = render_katib_experiment(
        study.sweep, image, output=output, name=name or experiment_name(study.name),
        preset=preset, overrides=overrides, **options)
    return dump_yaml(experiment)
