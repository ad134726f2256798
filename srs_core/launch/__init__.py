"""Where training runs: a Kubeflow PyTorchJob on a cluster, or torchrun on this machine.

- :mod:`.pytorchjob` builds the ``kubeflow.org/v1`` PyTorchJob from a :class:`JobSpec` with the
  ``kubeflow-training`` SDK models and validates it against the vendored CRD schema.
- :mod:`.client` creates or adopts it, streams the master's log, waits, explains a failure and
  cleans up (:class:`PyTorchJobLauncher`, :func:`run_pytorchjob`).
- :mod:`.local` runs the same entrypoint under ``torchrun --standalone`` (:func:`run_local`).
"""

from srs_core.launch.client import (
    JobOutcome,
    PyTorchJobLauncher,
    job_state,
    kube_configuration,
    run_pytorchjob,
)
from srs_core.launch.local import LocalResult, LocalTorchrun, run_local
from srs_core.launch.pytorchjob import (
    JobSpec,
    build_pytorchjob,
    job_name,
    parse_key_values,
    parse_toleration,
    render_pytorchjob,
    render_yaml,
    validate_pytorchjob,
)

__all__ = [
    "JobOutcome",
    "JobSpec",
    "LocalResult",
    "LocalTorchrun",
    "PyTorchJobLauncher",
    "build_pytorchjob",
    "job_name",
    "job_state",
    "kube_configuration",
    "parse_key_values",
    "parse_toleration",
    "render_pytorchjob",
    "render_yaml",
    "run_local",
    "run_pytorchjob",
    "validate_pytorchjob",
]
