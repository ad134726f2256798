"""Kubernetes settings of the pipeline's tasks: object-store Secret, resources, GPU nodes.

Everything cluster-specific is a constant here so that the pipeline function reads like the
DAG; the names match the manifests in `manifests/` (Secret, GPU node label and taint).
"""

from __future__ import annotations

from kfp import kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl.pipeline_channel import PipelineChannel

# The MinIO Secret in the run's namespace; its keys become the env vars `srs_core.store` reads.
# Credentials never appear as pipeline parameters or literals: the compiled YAML holds only
# the Secret's name and key names.
STORE_SECRET = "srs-minio"
STORE_SECRET_KEYS = {
    "endpoint": "SRS_S3_ENDPOINT",
    "access-key": "SRS_S3_ACCESS_KEY",
    "secret-key": "SRS_S3_SECRET_KEY",
    "secure": "SRS_S3_SECURE",
}

GPU_RESOURCE = "nvidia.com/gpu"
# Label set by NVIDIA's GPU feature discovery / GPU operator on GPU nodes.
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
# GPU nodes are usually tainted so that only pods asking for them land there.
GPU_TAINT_KEY = "nvidia.com/gpu"


def with_store_secret(task: PipelineTask) -> PipelineTask:
    """Give the task the object-store endpoint and credentials from :data:`STORE_SECRET`."""
    return kubernetes.use_secret_as_env(
        task, secret_name=STORE_SECRET, secret_key_to_env=STORE_SECRET_KEYS
    )


def with_resources(task: PipelineTask, cpu: str, memory: str) -> PipelineTask:
    """Request ``cpu``/``memory`` and allow twice as much CPU, the same memory (no OOM surprise
    from overcommit: memory requests equal limits)."""
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
