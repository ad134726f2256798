"""Where training runs: a Kubeflow job on a cluster, or torchrun on this machine.

- :mod:`.spec`: the job-neutral :class:`JobSpec` and the pod every job kind runs.
- :mod:`.backend`: the small interface of a job kind; :mod:`.pytorchjob` (Training Operator v1
  ``PyTorchJob``) and :mod:`.trainjob` (Trainer v2 ``TrainJob`` on the ``srs-torch``
  ClusterTrainingRuntime) implement it, each validating against its vendored CRD.
- :mod:`.client`: one loop for every kind — create or adopt, stream the rank-0 log, say why a
  job cannot start, wait, explain a failure, cancel, clean up (:class:`JobLauncher`,
  :func:`run_job`).
- :mod:`.local` runs the same entrypoint under ``torchrun --standalone`` (:func:`run_local`).
"""

from srs_core.launch.backend import BACKENDS, Backend, JobStatus, get_backend
from srs_core.launch.client import (
    JobLauncher,
    JobOutcome,
    PyTorchJobLauncher,
    run_job,
    run_pytorchjob,
)
from srs_core.launch.kube import job_state, kube_configuration, step_owner
from srs_core.launch.local import LocalResult, LocalTorchrun, run_local
from srs_core.launch.parsing import parse_key_values, parse_toleration
from srs_core.launch.pytorchjob import (
    build_pytorchjob,
    render_pytorchjob,
    render_yaml,
    validate_pytorchjob,
)
from srs_core.launch.spec import JobSpec, job_name
from srs_core.launch.trainjob import (
    build_runtime,
    build_trainjob,
    render_runtime,
    render_trainjob,
    validate_runtime,
    validate_trainjob,
)

JOB_KINDS = tuple(BACKENDS)

__all__ = [
    "BACKENDS",
    "JOB_KINDS",
    "Backend",
    "JobLauncher",
    "JobOutcome",
    "JobSpec",
    "JobStatus",
    "LocalResult",
    "LocalTorchrun",
    "PyTorchJobLauncher",
    "build_pytorchjob",
    "build_runtime",
    "build_trainjob",
    "get_backend",
    "job_name",
    "job_state",
    "kube_configuration",
    "parse_key_values",
    "parse_toleration",
    "render_pytorchjob",
    "render_runtime",
    "render_trainjob",
    "render_yaml",
    "run_job",
    "run_local",
    "run_pytorchjob",
    "step_owner",
    "validate_pytorchjob",
    "validate_runtime",
    "validate_trainjob",
]
