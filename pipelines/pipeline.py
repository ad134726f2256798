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


def _retry(task: dsl.PipelineTask, times: int = 2) -> dsl.PipelineTask:
    """Retry a step whose failures are mostly transient (store, network, node eviction) and
    that is cheap or resumable to run again."""
    return task.set_retry(num_retries=times, backoff_duration="30s", backoff_factor=2.0)


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
    """
    config = {"output_root": output_root, "preset": preset, "overrides": overrides}

    # Parameters are checked first, in the validate step, before any step does work.
    data = validate(
        stickerchat=stickerchat_uri, ser30k=ser30k_uri, strict=strict_validation, preset=preset,
        overrides=overrides, anchors_k=anchors_k, epochs=epochs, batch_size=batch_size,
        train_nodes=train_nodes, gpus_per_node=gpus_per_node, eval_split=eval_split,
        train_timeout_hours=train_timeout_hours, sentiment_workers=sentiment_workers,
        training_backend=training_backend,
    )
    with_resources(_retry(data, 3), *RESOURCES["validate"])
    stickerchat, ser30k = data.outputs["stickerchat"], data.outputs["ser30k"]

    sentiment = prepare_sentiment(stickerchat=stickerchat, output_root=output_root,
                                  workers=sentiment_workers)
    with_resources(_retry(sentiment), *RESOURCES["sentiment"])

    teacher = train_emotion_teacher(ser30k=ser30k, **config)
    on_gpu(with_resources(_retry(teacher), *RESOURCES["teacher"]))  # resumes from its epochs

    anchors = cluster_anchors(ser30k=ser30k, teacher=teacher.outputs["teacher"], k=anchors_k,
                              **config)
    on_gpu(with_resources(_retry(anchors), *RESOURCES["anchors"]))

    training = dict(
        stickerchat=stickerchat, sentiment=sentiment.output, teacher=teacher.outputs["teacher"],
        anchors=anchors.output, epochs=epochs, batch_size=batch_size, nodes=train_nodes,
        gpus_per_node=gpus_per_node, job_image=job_image, job_cleanup=job_cleanup,
        timeout_hours=train_timeout_hours, store_secret=STORE_SECRET,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **config,
    )
    on_cluster = dict(queue=job_queue, priority_class=job_priority_class,
                      pending_timeout_minutes=pending_timeout_minutes, job_owner=job_owner)
    with dsl.If(training_backend == "pytorchjob", name="on-pytorchjob"):
        # The step only creates and watches the job: the GPUs are requested by the job's pods.
        # A retried step adopts the job it created (same run id) instead of starting another.
        on_job = train_srs(backend="pytorchjob", **training, **on_cluster).set_display_name(
            "train-srs-pytorchjob")
        with_job_defaults(with_resources(_retry(on_job), *RESOURCES["train_launcher"]))
    with dsl.Elif(training_backend == "trainjob", name="on-trainjob"):
        on_trainjob = train_srs(backend="trainjob", **training, **on_cluster).set_display_name(
            "train-srs-trainjob")
        with_job_defaults(with_resources(_retry(on_trainjob), *RESOURCES["train_launcher"]))
    with dsl.Else(name="in-step"):
        in_step = train_srs(backend="local", **training).set_display_name("train-srs")
        # One retry: training resumes from its last checkpoint (e.g. after a node eviction).
        on_gpu(with_resources(_retry(in_step, 1), *RESOURCES["train_in_step"]), gpus_per_node)
    trained = (on_job, on_trainjob, in_step)
    for task in trained:
        task.set_caching_options(enable_caching=False)
    train_output = dsl.OneOf(*(task.outputs["output"] for task in trained))
    checkpoint = dsl.OneOf(*(task.outputs["checkpoint"] for task in trained))

    # A condition rather than an `enabled` input of the step: the step holds a GPU node, which
    # a flag could only release after scheduling it. KFP feeds a conditional output to a later
    # step only through dsl.OneOf over both branches, so the off branch is a no-op step that
    # returns "" (a few CPU seconds). Not cached: `submit --no-cache` (kfp.Client) turns
    # caching off in the top-level DAG only, so a nested task must not rely on it.
    with dsl.If(build_index == True, name="with-index"):  # noqa: E712 (a KFP condition)
        indexed = index_stickers(checkpoint=checkpoint, stickerchat=stickerchat,
                                 output_root=output_root)
        on_gpu(with_resources(_retry(indexed), *RESOURCES["index"]))
        indexed.set_caching_options(enable_caching=False)
    with dsl.Else(name="without-index"):
        unindexed = with_resources(no_index(), *RESOURCES["no_index"]).set_caching_options(
            enable_caching=False)
    index = dsl.OneOf(indexed.outputs["Output"], unindexed.output)

    scores = evaluate(stickerchat=stickerchat, checkpoint=checkpoint, train_output=train_output,
                      split=eval_split, library=index, **config)
    on_gpu(with_resources(_retry(scores), *RESOURCES["evaluate"]))
    scores.set_caching_options(enable_caching=False)

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

    for task in (data, sentiment, teacher, anchors, *trained, indexed, unindexed, scores,
                 served):
        as_non_root(with_store_secret(task))
    return scores.outputs["metrics"]
