"""Kubernetes settings of the pipeline's tasks: object-store Secret, resources, GPU nodes.

Everything cluster-specific is a constant here so that the pipeline function reads like the
DAG; the names match `manifests/` and the PyTorchJob launcher (`srs_core.launch.pytorchjob`).
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.pipeline_channel import PipelineChannel

from srs_core.launch.spec import ENV_VARIABLES as JOB_ENV_VARIABLES
from srs_core.store.s3_config import ENV_KEYS, OPTIONAL_ENV_KEYS
from srs_core.store.s3_config import SECRET_NAME as STORE_SECRET

# The MinIO Secret in the run's namespace. Its keys are the env var names `srs_core.store`
# reads (the PyTorchJob's pods map the same keys). Credentials never appear as pipeline
# parameters or literals: the compiled YAML holds only the Secret's name and key names.
STORE_SECRET_KEYS = tuple(key for key in ENV_KEYS if key not in OPTIONAL_ENV_KEYS)
STORE_SECRET_OPTIONAL_KEYS = OPTIONAL_ENV_KEYS  # absent: TLS unless the endpoint says http://

# Cluster defaults of the PyTorchJob (`JobSpec.from_env`) from the namespace's ConfigMap
# (manifests/), optional, so a namespace without it gets the launcher's built-in defaults.
# Left out: what the run decides (image, replicas, GPUs and so processes per replica: pipeline
# parameters, visible in the UI), the namespace (the run's own) and the Secret (above).
JOB_DEFAULTS_CONFIG_MAP = "srs-defaults"
_RUN_DECIDES = {"SRS_JOB_NAMESPACE", "SRS_JOB_IMAGE", "SRS_JOB_WORKERS", "SRS_JOB_NPROC_PER_NODE",
                "SRS_JOB_GPUS_PER_WORKER", "SRS_JOB_SECRET"}
JOB_DEFAULT_KEYS = tuple(k for k in JOB_ENV_VARIABLES if k not in _RUN_DECIDES)

# The images' non-root user (images/ creates it with this numeric id, which lets Kubernetes
# verify runAsNonRoot).
RUN_AS_USER = 1000

GPU_RESOURCE = "nvidia.com/gpu"
# Label set by NVIDIA's GPU feature discovery / GPU operator on GPU nodes.
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
# GPU nodes are usually tainted so that only pods asking for them land there.
GPU_TAINT_KEY = "nvidia.com/gpu"


def with_store_secret(task: PipelineTask) -> PipelineTask:
    """Give the task the object-store endpoint and credentials from :data:`STORE_SECRET`."""
    kubernetes.use_secret_as_env(task, secret_name=STORE_SECRET,
                                 secret_key_to_env={k: k for k in STORE_SECRET_KEYS})
    return kubernetes.use_secret_as_env(
        task, secret_name=STORE_SECRET,
        secret_key_to_env={k: k for k in STORE_SECRET_OPTIONAL_KEYS}, optional=True)


def as_non_root(task: PipelineTask) -> PipelineTask:
    """Run the step's container as the images' unprivileged user."""
    return kubernetes.set_security_context(task, run_as_user=RUN_AS_USER,
                                           run_as_group=RUN_AS_USER, run_as_non_root=True)


# The step pod's own name and uid, for job_owner=step (the job's ownerReference).
OWNER_FIELDS = {"SRS_POD_NAME": "metadata.name", "SRS_POD_UID": "metadata.uid"}


def with_job_defaults(task: PipelineTask) -> PipelineTask:
    """For the job launcher: its namespace (the run's own, where its RBAC applies), its own pod
    name and uid (job_owner=step) and the cluster's job defaults from
    :data:`JOB_DEFAULTS_CONFIG_MAP`."""
    kubernetes.use_field_path_as_env(task, "SRS_JOB_NAMESPACE", "metadata.namespace")
    for env, path in OWNER_FIELDS.items():
        kubernetes.use_field_path_as_env(task, env, path)
    return kubernetes.use_config_map_as_env(
        task, JOB_DEFAULTS_CONFIG_MAP, {k: k for k in JOB_DEFAULT_KEYS}, optional=True)


def with_resources(task: PipelineTask, cpu: str, memory: str) -> PipelineTask:
    """Request ``cpu``/``memory``; allow twice the CPU and the same memory (memory requests
    equal limits: no OOM kill from overcommit)."""
    limit_cpu = str(float(cpu) * 2).removesuffix(".0")
    return (
        task.set_cpu_request(cpu).set_cpu_limit(limit_cpu)
        .set_memory_request(memory).set_memory_limit(memory)
    )


def on_gpu(task: PipelineTask, count: int | PipelineChannel = 1) -> PipelineTask:
    """Schedule the task on a GPU node with ``count`` GPUs (a number or pipeline parameter)."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(count)
    kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL[0], label_value=GPU_NODE_LABEL[1])
    kubernetes.add_toleration(task, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")
    return task
