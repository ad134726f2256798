"""The SRS workflow as a KFP v2 pipeline (DESIGN.md section 1).

```
validate ──► prepare_sentiment ─────────────────────────────┐
    └──────► train_emotion_teacher ──► cluster_anchors ──► train_srs ──► build_index ──►
        evaluate ──► deploy_model (deploy=render|apply)
```

``build_index`` (on by default: suggesting from the whole library is the product) embeds every
sticker with the trained model; evaluation then also ranks each answer among the whole library
(``library_ita_R@10``, ``library_rerank50_MRR`` ...). ``deploy`` renders this run's KServe
InferenceService (``<output_root>/serving/inferenceservice.yaml`` and a KFP artifact) and, with
``apply``, creates or updates it and waits until it is Ready.

The DAG is built by :func:`shared_steps` (validate, sentiment, teacher, anchors) and
:func:`train_and_evaluate` (train, index, evaluate one model), which the study pipeline
(:mod:`pipelines.study`) reuses: the shared steps once, the rest once per variant.

Steps pass store URIs (all outputs live under the ``output_root`` parameter) plus KFP
artifacts for the UI. Cluster settings (Secret env, resources, GPU nodes) are applied here,
per task; they have no effect under ``kfp.local``, which runs the same DAG on one machine.

Caching: KFP keys a cached step on its inputs, which are URIs, so a step is cached only where
the same URIs always mean the same content: the data roots (treated as immutable: new data, new
URI) and what the deterministic steps derive from them. Training rewrites ``<root>/srs`` (it
resumes from its own checkpoints), so training, and the steps that read its checkpoint (index,
evaluation, deployment), never cache.

Retries: every step is cheap to repeat or resumes where it stopped (sentiment chunks, teacher
epochs, training checkpoints, an adopted PyTorchJob or TrainJob), so pod evictions and node
losses cost little. ``srs pipeline run --local`` drops them: on one machine a retry repeats
the failure.
"""

# No `from __future__ import annotations`: KFP reads the parameter types at definition time.
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Metrics

from components import build_index as index_stickers
from components import (
    cluster_anchors,
    deploy_model,
    evaluate,
    no_index,
    prepare_sentiment,
    train_emotion_teacher,
    train_srs,
    validate,
)
from components._image import BASE_IMAGE, GPU_IMAGE
from pipelines.platform import (
    STORE_SECRET,
    as_non_root,
    on_gpu,
    with_job_defaults,
    with_resources,
    with_store_secret,
)
from srs_core.deploy.apply import NAMESPACE_ENV

PIPELINE_NAME = "srs-perceive-before-respond"
BACKENDS = ("pytorchjob", "trainjob", "local")
JOB_OWNERS = ("none", "step")
JOB_CLEANUP = ("on-success", "always", "never")
DEPLOY_MODES = ("none", "render", "apply")  # = srs_core.deploy.DEPLOY_MODES (a test says so)
# CPU request (the limit is twice that) and memory (request = limit) per step, sized for the
# real data set; kfp.local ignores them.
RESOURCES = {
    "validate": ("2", "4Gi"),
    "sentiment": ("4", "8Gi"),  # with sentiment_workers=4 processes
    "teacher": ("8", "32Gi"),
    "anchors": ("8", "32Gi"),
    "train_in_step": ("8", "64Gi"),
    "train_launcher": ("0.5", "1Gi"),  # only watches the PyTorchJob / TrainJob
    "index": ("8", "32Gi"),  # decodes every sticker of the library into its cache
    "no_index": ("0.1", "128Mi"),
    "evaluate": ("8", "32Gi"),
    "deploy": ("0.5", "1Gi"),  # renders, then talks to the API server
}


# The pipeline parameters that the validate step checks (with the data roots).
VALIDATED = ("preset", "overrides", "anchors_k", "epochs", "batch_size", "train_nodes",
             "gpus_per_node", "eval_split", "train_timeout_hours", "sentiment_workers",
             "training_backend")


def _retry(task: dsl.PipelineTask, times: int = 2) -> dsl.PipelineTask:
    """Retry a step whose failures are mostly transient (store, network, node eviction) and
    that is cheap or resumable to run again."""
    return task.set_retry(num_retries=times, backoff_duration="30s", backoff_factor=2.0)


class Shared(NamedTuple):
    """The upstream steps every model of a run shares (a study runs them once)."""

    data: dsl.PipelineTask
    sentiment: dsl.PipelineTask
    teacher: dsl.PipelineTask
    anchors: dsl.PipelineTask


class Model(NamedTuple):
    """One trained, indexed and evaluated model: its outputs and the tasks that made it."""

    train_output: dsl.OneOf
    checkpoint: dsl.OneOf
    index: dsl.OneOf
    scores: dsl.PipelineTask


def shared_steps(p: dict) -> Shared:
    """validate -> sentiment, teacher -> anchors, from the pipeline parameters ``p``."""
    config = {"output_root": p["output_root"], "preset": p["preset"],
              "overrides": p["overrides"]}
    # Parameters are checked first, in the validate step, before any step does work.
    data = validate(
        stickerchat=p["stickerchat_uri"], ser30k=p["ser30k_uri"], strict=p["strict_validation"],
        **{name: p[name] for name in VALIDATED},
    )
    with_resources(_retry(data, 3), *RESOURCES["validate"])
    stickerchat, ser30k = data.outputs["stickerchat"], data.outputs["ser30k"]

    sentiment = prepare_sentiment(stickerchat=stickerchat, output_root=p["output_root"],
                                  workers=p["sentiment_workers"])
    with_resources(_retry(sentiment), *RESOURCES["sentiment"])

    teacher = train_emotion_teacher(ser30k=ser30k, **config)
    on_gpu(with_resources(_retry(teacher), *RESOURCES["teacher"]))  # resumes from its epochs

    anchors = cluster_anchors(ser30k=ser30k, teacher=teacher.outputs["teacher"],
                              k=p["anchors_k"], **config)
    on_gpu(with_resources(_retry(anchors), *RESOURCES["anchors"]))
    for task in (data, sentiment, teacher, anchors):
        as_non_root(with_store_secret(task))
    return Shared(data, sentiment, teacher, anchors)


def _train(p: dict, training: dict) -> tuple[dsl.PipelineTask, ...]:
    """The training step on the run's backend: three branches, one of which runs."""
    on_cluster = dict(queue=p["job_queue"], priority_class=p["job_priority_class"],
                      pending_timeout_minutes=p["pending_timeout_minutes"],
                      job_owner=p["job_owner"])
    backend = p["training_backend"]
    with dsl.If(backend == "pytorchjob", name="on-pytorchjob"):
        # The step only creates and watches the job: the GPUs are requested by the job's pods.
        # A retried step adopts the job it created (same run id) instead of starting another.
        on_job = train_srs(backend="pytorchjob", **training, **on_cluster).set_display_name(
            "train-srs-pytorchjob")
        with_job_defaults(with_resources(_retry(on_job), *RESOURCES["train_launcher"]))
    with dsl.Elif(backend == "trainjob", name="on-trainjob"):
        on_trainjob = train_srs(backend="trainjob", **training, **on_cluster).set_display_name(
            "train-srs-trainjob")
        with_job_defaults(with_resources(_retry(on_trainjob), *RESOURCES["train_launcher"]))
    with dsl.Else(name="in-step"):
        in_step = train_srs(backend="local", **training).set_display_name("train-srs")
        # One retry: training resumes from its last checkpoint (e.g. after a node eviction).
        on_gpu(with_resources(_retry(in_step, 1), *RESOURCES["train_in_step"]),
               p["gpus_per_node"])
    return on_job, on_trainjob, in_step


def _index(p: dict, checkpoint: dsl.OneOf, stickerchat: object, output_root: object
           ) -> tuple[dsl.OneOf, tuple[dsl.PipelineTask, ...]]:
    """The library index of ``checkpoint`` (or "" with ``build_index=false``)."""
    # A condition rather than an `enabled` input of the step: the step holds a GPU node, which
    # a flag could only release after scheduling it. KFP feeds a conditional output to a later
    # step only through dsl.OneOf over both branches, so the off branch is a no-op step that
    # returns "" (a few CPU seconds). Not cached: `submit --no-cache` (kfp.Client) turns
    # caching off in the top-level DAG only, so a nested task must not rely on it.
    with dsl.If(p["build_index"] == True, name="with-index"):  # noqa: E712 (a KFP condition)
        indexed = index_stickers(checkpoint=checkpoint, stickerchat=stickerchat,
                                 output_root=output_root)
        on_gpu(with_resources(_retry(indexed), *RESOURCES["index"]))
        indexed.set_caching_options(enable_caching=False)
    with dsl.Else(name="without-index"):
        unindexed = with_resources(no_index(), *RESOURCES["no_index"]).set_caching_options(
            enable_caching=False)
    return dsl.OneOf(indexed.outputs["Output"], unindexed.output), (indexed, unindexed)


def train_and_evaluate(p: dict, shared: Shared, output_root: object, overrides: object,
                       epochs: object, batch_size: object, variant: object = "",
                       registered_model: object = "", registered_alias: object = "") -> Model:
    """train -> index -> evaluate one model under ``output_root`` with ``overrides`` (the run's
    own, or a study variant's), on the shared steps' outputs. A study's variant leaves the
    MLflow pipeline run open (its compare step ends it) and registers nothing."""
    config = {"output_root": output_root, "preset": p["preset"], "overrides": overrides}
    stickerchat = shared.data.outputs["stickerchat"]
    training = dict(
        stickerchat=stickerchat, sentiment=shared.sentiment.output,
        teacher=shared.teacher.outputs["teacher"], anchors=shared.anchors.output, epochs=epochs,
        batch_size=batch_size, nodes=p["train_nodes"], gpus_per_node=p["gpus_per_node"],
        job_image=p["job_image"], job_cleanup=p["job_cleanup"],
        timeout_hours=p["train_timeout_hours"], store_secret=STORE_SECRET,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **({"variant": variant} if variant else {}),
        **config,
    )
    trained = _train(p, training)
    for task in trained:
        task.set_caching_options(enable_caching=False)
    train_output = dsl.OneOf(*(task.outputs["output"] for task in trained))
    checkpoint = dsl.OneOf(*(task.outputs["checkpoint"] for task in trained))
    index, indexing = _index(p, checkpoint, stickerchat, output_root)

    scores = evaluate(stickerchat=stickerchat, checkpoint=checkpoint, train_output=train_output,
                      split=p["eval_split"], library=index,
                      run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, registered_model=registered_model,
                      registered_alias=registered_alias, ends_pipeline=not variant, **config)
    on_gpu(with_resources(_retry(scores), *RESOURCES["evaluate"]))
    scores.set_caching_options(enable_caching=False)
    for task in (*trained, *indexing, scores):
        as_non_root(with_store_secret(task))
    return Model(train_output, checkpoint, index, scores)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Perceive before Respond: sticker response selection with emotion distillation "
    "and polarity-aware hard negatives.",
)
def srs_pipeline(
    stickerchat_uri: str = "s3://srs-data/stickerchat",
    ser30k_uri: str = "s3://srs-data/ser30k",
    output_root: str = "s3://srs-runs/default",
    preset: str = "paper",
    overrides: str = "",
    anchors_k: int = 60,
    epochs: int = 5,
    batch_size: int = 4,
    train_nodes: int = 2,
    gpus_per_node: int = 1,
    training_backend: str = "pytorchjob",
    job_image: str = GPU_IMAGE,
    job_cleanup: str = "on-success",
    train_timeout_hours: float = 72.0,
    job_queue: str = "",
    job_priority_class: str = "",
    pending_timeout_minutes: float = 60.0,
    job_owner: str = "none",
    sentiment_workers: int = 4,
    strict_validation: bool = False,
    eval_split: str = "test",
    build_index: bool = True,
    deploy: str = "none",
    serving_name: str = "srs-suggest",
    serving_namespace: str = "",
    serving_image: str = BASE_IMAGE,
    serving_wait_minutes: float = 15.0,
    registered_model: str = "srs-selector",
    registered_alias: str = "",
) -> Metrics:
    """The whole workflow; returns the evaluation metrics.

    ``overrides``: extra ``section.key=value`` config settings, space-separated, for every
    step (the parameters here win over them). ``training_backend``: ``pytorchjob`` (a Training
    Operator v1 PyTorchJob) or ``trainjob`` (a Kubeflow Trainer v2 TrainJob on the ``srs-torch``
    runtime), each ``train_nodes`` pods of ``gpus_per_node`` GPUs, or ``local`` (torchrun with
    ``gpus_per_node`` processes inside the step). ``job_queue`` / ``job_priority_class``: the
    Kueue LocalQueue and WorkloadPriorityClass of the job ("" = the cluster's srs-defaults);
    ``pending_timeout_minutes``: fail when the job has not started by then, with the reasons the
    cluster gives (0 = no limit); ``job_owner``: ``step`` lets a deleted run take its job along
    (then a retried step cannot adopt a job whose first step pod is gone). Images are constants
    of the components (KFP fixes them at compile time); ``job_image`` is the job's image, the
    one image a run may choose. ``job_cleanup``: when to delete the job (``on-success`` keeps
    failed ones for inspection, ``always``, ``never``).

    ``build_index``: index the whole sticker library with the trained model and add the
    library metrics to the evaluation. ``deploy``: ``none``, ``render`` (write this run's KServe
    InferenceService, ``serving_name`` in ``serving_namespace`` ("" = the run's own), running
    ``serving_image``) or ``apply`` (also create or update it, and fail unless it is Ready
    within ``serving_wait_minutes``); it needs the index.

    ``registered_model``: register the evaluated model as a new version of this MLflow
    registered model ("" = do not), and point ``registered_alias`` (e.g. ``champion``; "" =
    none) at it; training and evaluation log to MLflow (``srs_core.tracking``).
    """
    params = dict(locals())  # the pipeline parameters by name, for the shared builders
    shared = shared_steps(params)
    model = train_and_evaluate(params, shared, output_root, overrides, epochs, batch_size,
                               registered_model=registered_model,
                               registered_alias=registered_alias)
    checkpoint, index, scores = model.checkpoint, model.index, model.scores

    # After evaluation: only a model that evaluated is deployed.
    with dsl.If(deploy != "none", name="deploy"):
        served = deploy_model(
            mode=deploy, checkpoint=checkpoint, index=index, output_root=output_root,
            name=serving_name, namespace=serving_namespace, image=serving_image,
            wait_minutes=serving_wait_minutes, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        ).after(scores)
        # Create-or-update is idempotent, so a retry is safe; one only: a service that did not
        # become Ready in serving_wait_minutes rarely does on a second wait.
        with_resources(_retry(served, 1), *RESOURCES["deploy"]).set_caching_options(
            enable_caching=False)
        kubernetes.use_field_path_as_env(served, NAMESPACE_ENV, "metadata.namespace")

    as_non_root(with_store_secret(served))
    return scores.outputs["metrics"]
