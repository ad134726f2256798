"""The KServe InferenceService that serves one checkpoint and its library index (`srs serve`).

``manifests/serving/inferenceservice.yaml`` is the hand-applied variant of the same object: its
checkpoint and index come from a ConfigMap (kustomize's generator). Here they are literal env
values, so a new checkpoint is a new pod template and KServe rolls out a new revision.
tests/test_deploy.py checks that the two are the same object apart from those two values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from srs_core.errors import ConfigError
from srs_core.launch.schema import SCHEMAS, to_dict, validate_object
from srs_core.launch.spec import WRITABLE_ENV, WRITABLE_MOUNTS
from srs_core.store.s3_config import ENV_KEYS, OPTIONAL_ENV_KEYS, SECRET_NAME

API_VERSION = "serving.kserve.io/v1beta1"
GROUP, VERSION = API_VERSION.split("/")
KIND = "InferenceService"
PLURAL = "inferenceservices"
CRD_PATH = SCHEMAS / "serving.kserve.io_inferenceservices.yaml"
DEFAULT_NAME = "srs-suggest"
LABELS = {"app.kubernetes.io/name": "srs", "app.kubernetes.io/component": "suggest"}
CONTAINER = "kserve-container"  # KServe's name for a custom predictor's container
PORT = 8080  # where KServe routes /v1/models/<name>:predict
MODEL_ENV = ("SRS_CHECKPOINT", "SRS_INDEX")  # what `srs serve` serves, expanded into its args
SERVING_ENV = ("HOME", "TMPDIR", "XDG_CACHE_HOME", "SRS_CACHE_DIR")  # of launch.spec's
SERVICE_ACCOUNT = "srs-trainer"  # no API access needed: the model comes from the store


@dataclass(frozen=True)
class Resources:
    """The predictor's CPU and memory (tiny-to-paper CPU inference: the ViT reranks N
    stickers per request); ``cache`` bounds the emptyDir holding best.pt, index and stickers."""

    cpu: str = "2"
    memory: str = "4Gi"
    cpu_limit: str = "4"
    memory_limit: str = "8Gi"
    cache: str = "8Gi"


def _container(image: str, checkpoint: str, index: str, resources: Resources,
               secret_name: str) -> Any:
    from kubernetes import client as k8s

    env = [k8s.V1EnvVar(name=name, value=value)
           for name, value in zip(MODEL_ENV, (checkpoint, index), strict=True)]
    for key in ENV_KEYS:  # values stay in the Secret; the object only names it
        ref = k8s.V1SecretKeySelector(name=secret_name, key=key,
                                      optional=True if key in OPTIONAL_ENV_KEYS else None)
        env.append(k8s.V1EnvVar(name=key, value_from=k8s.V1EnvVarSource(secret_key_ref=ref)))
    env += [k8s.V1EnvVar(name=name, value=WRITABLE_ENV[name]) for name in SERVING_ENV]
    # $(VAR) is expanded by the kubelet from the env above.
    command = ["srs", "serve", "--checkpoint", "$(SRS_CHECKPOINT)", "--index", "$(SRS_INDEX)",
               "--port", str(PORT)]
    return k8s.V1Container(
        name=CONTAINER, image=image, command=command, env=env,
        ports=[k8s.V1ContainerPort(name="http1", container_port=PORT, protocol="TCP")],
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": resources.cpu, "memory": resources.memory},
            limits={"cpu": resources.cpu_limit, "memory": resources.memory_limit}),
        # Container level: Knative rejects most pod-level securityContext fields by default.
        security_context=k8s.V1SecurityContext(
            run_as_non_root=True, run_as_user=1000, run_as_group=1000,
            allow_privilege_escalation=False, read_only_root_filesystem=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        volume_mounts=[k8s.V1VolumeMount(name=name, mount_path=path)
                       for name, path in WRITABLE_MOUNTS.items()],
    )


def inference_service(name: str, namespace: str, image: str, checkpoint: str, index: str, *,
                      resources: Resources = Resources(), secret_name: str = SECRET_NAME,
                      service_account: str = SERVICE_ACCOUNT,
                      labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The InferenceService serving ``checkpoint`` with ``index``, validated against KServe's
    CRD; ``namespace`` "" leaves it to ``kubectl -n``."""
    from kserve.models import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1PredictorSpec,
    )
    from kubernetes import client as k8s

    if not (checkpoint and index):
        raise ConfigError(f"InferenceService {name!r}: needs a checkpoint and a library index "
                          f"(got checkpoint={checkpoint!r}, index={index!r}); build the index "
                          "with `srs index build` (pipeline: build_index=true)")
    volumes = [k8s.V1Volume(name=volume, empty_dir=k8s.V1EmptyDirVolumeSource(
        size_limit=resources.cache if volume == "cache" else None)) for volume in WRITABLE_MOUNTS]
    isvc = V1beta1InferenceService(
        api_version=API_VERSION, kind=KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace or None,
                                  labels={**LABELS, **(labels or {})}),
        spec=V1beta1InferenceServiceSpec(predictor=V1beta1PredictorSpec(
            min_replicas=1, service_account_name=service_account,
            containers=[_container(image, checkpoint, index, resources, secret_name)],
            volumes=volumes)),
    )
    manifest = to_dict(isvc)
    validate_object(manifest, CRD_PATH, VERSION)  # strict: a misspelt field is an error
    return manifest
