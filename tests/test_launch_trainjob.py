"""Both job kinds through the one launcher loop, against the loopback stub API server (no
cluster here), and the Trainer v2 objects against the vendored Trainer v2.3.0 CRDs."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import yaml
from kubernetes.client import Configuration
from launch_stub import (
    GONE,
    StubApiServer,
    conditions,
    event,
    pod,
    trainjob_pod,
    trainjob_status,
    workload,
)

from srs_core.cli import main
from srs_core.errors import ConfigError, JobError
from srs_core.launch import JobLauncher, JobSpec, get_backend, render_runtime, render_trainjob
from srs_core.launch.spec import WRITABLE_MOUNTS
from srs_core.launch.trainjob import RUNTIME_CRD, TRAINJOB_CRD, validate_trainjob

NS, NAME = "srs", "srs-train-run1"
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "schemas"
PATHS = {"pytorchjob": f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs",
         "trainjob": f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"}
KINDS = sorted(PATHS)


def status(kind: str, state: str, reason: str = "", message: str = "") -> dict:
    if kind == "trainjob":
        return trainjob_status(state, reason, message)
    if state == "Suspended":
        return {"conditions": [conditions("Created")["conditions"][0],
                               {"type": "Suspended", "status": "True", "reason": "JobSuspended",
                                "message": message or "suspended"}]}
    return conditions({"Admitted": "Running"}.get(state, state), reason, message)


def make_pod(kind: str, rank: int = 0, **kw) -> dict:
    if kind == "trainjob":
        return trainjob_pod(NAME, rank, **kw)
    return pod(NAME, "master" if rank == 0 else "worker", max(rank - 1, 0), **kw)


@pytest.fixture()
def stub():
    server = StubApiServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO, logger="srs_core.launch")


def spec(**changes) -> JobSpec:
    return JobSpec(name=NAME, namespace=NS, image="srs:test", workers=2, run_id="run1",
                   train_args=["train", "--preset", "tiny"],
                   checkpoint_uri="s3://b/runs/run1").with_overrides(**changes)


def launcher(stub, kind, **kw) -> JobLauncher:
    options = {"poll_interval": 0.02, "request_timeout": 5, "log_drain_timeout": 5, **kw}
    return JobLauncher(Configuration(host=stub.url), backend=kind, **options)


def logged(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


# -- the same scenarios on both kinds -----------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_create_run_complete_streams_rank0_log_and_cleans_up(stub, kind, caplog):
    master = make_pod(kind)
    stub.pods.append(master)
    stub.logs[master["metadata"]["name"]] = ["epoch 1 loss 0.9"]
    stub.script(NAME, status(kind, "Pending"), lambda s: status(
        kind, "Succeeded" if s.log_reads else "Running"))
    outcome = launcher(stub, kind).run(spec(), timeout=30)
    assert (outcome.state, outcome.created, outcome.deleted) == ("Succeeded", True, True)
    (post,) = stub.calls("POST", PATHS[kind])
    assert post.body == get_backend(kind).render(spec())
    assert logged(caplog, "epoch 1 loss 0.9") == 1
    assert len(stub.calls("DELETE", f"{PATHS[kind]}/{NAME}")) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_existing_job_is_adopted(stub, kind):
    stub.add_job(get_backend(kind).render(spec()), status(kind, "Running"))
    stub.script(NAME, status(kind, "Running"), status(kind, "Succeeded"))
    outcome = launcher(stub, kind).run(spec(), timeout=30, follow_logs=False)
    assert (outcome.state, outcome.created) == ("Succeeded", False) and stub.calls("POST") == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_worker_and_the_master_are_both_named_with_codes_and_lines(stub, kind):
    master, worker = make_pod(kind, 0, exit_code=1), make_pod(kind, 1, exit_code=139,
                                                              reason="Error")
    stub.pods += [master, worker]
    stub.logs[worker["metadata"]["name"]] = ["rank 1 step 7", "Segmentation fault"]
    stub.logs[master["metadata"]["name"]] = ["rank 0 waiting", "NCCL error: peer 1 gone"]
    stub.script(NAME, status(kind, "Running"),
                status(kind, "Failed", "Failed", "1 job(s) failed"))
    with pytest.raises(JobError) as info:
        launcher(stub, kind).run(spec(), timeout=30, cleanup="on-success")
    message = str(info.value)
    for p, code, line in ((worker, 139, "Segmentation fault"), (master, 1, "NCCL error")):
        assert f"pod {p['metadata']['name']}" in message and f"exited with code {code}" in message
        assert f"| {line}" in message
    rank = "node rank 1" if kind == "trainjob" else "Worker 0"
    assert f"({rank})" in message and "1 job(s) failed" in message
    assert stub.calls("DELETE") == []  # kept for inspection


@pytest.mark.parametrize("kind", KINDS)
def test_suspended_by_kueue_then_admitted(stub, kind, caplog):
    def play(server):
        (job,) = server.jobs.values()
        uid = job["metadata"]["uid"]
        if not server.workloads:
            server.workloads.append(workload(uid, False, "couldn't assign flavors to pod set "
                                             "node: insufficient quota for nvidia.com/gpu"))
            return status(kind, "Suspended")
        if len(server.calls("GET", "/workloads")) < 2:
            return status(kind, "Suspended")
        server.workloads[:] = [workload(uid, True)]
        return status(kind, "Succeeded")

    stub.script(NAME, play)
    outcome = launcher(stub, kind).run(spec(queue_name="srs", priority_class="high"),
                                       timeout=30, follow_logs=False)
    assert outcome.state == "Succeeded"
    body = stub.calls("POST")[0].body
    assert body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "srs"
    assert body["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    suspend = (body["spec"]["runPolicy"] if kind == "pytorchjob" else body["spec"])["suspend"]
    assert suspend is True
    assert logged(caplog, "insufficient quota for nvidia.com/gpu") == 1  # said once
    wl = stub.calls("GET", "/workloads")[0]
    assert wl.query["labelSelector"].startswith("kueue.x-k8s.io/job-uid=")


@pytest.mark.parametrize("kind", KINDS)
def test_pending_reasons_are_logged_early_and_pending_timeout_fails_with_them(stub, kind, caplog):
    why = "0/12 nodes are available: 12 Insufficient nvidia.com/gpu."
    stuck = make_pod(kind, 0, unschedulable=why)
    stub.pods.append(stuck)
    stub.events.append(event(stuck["metadata"]["name"], "Pod", "FailedScheduling", why))
    stub.pods.append(make_pod(kind, 1, phase="Pending", waiting="ImagePullBackOff"))
    stub.script(NAME, status(kind, "Pending"))
    began = time.monotonic()
    with pytest.raises(JobError) as info:
        launcher(stub, kind, pending_timeout=0.5).run(spec(), timeout=30)
    assert time.monotonic() - began < 5
    message = str(info.value)
    assert "did not start within 0.5s (pending_timeout)" in message
    assert "FailedScheduling: " + why in message and "ImagePullBackOff" in message
    assert logged(caplog, "cannot start yet") >= 2 and logged(caplog, why) >= 1
    assert len(stub.calls("DELETE", f"{PATHS[kind]}/{NAME}")) == 1  # nothing watches it now


@pytest.mark.parametrize("kind", KINDS)
def test_a_queue_without_kueue_is_said(stub, kind):
    stub.workloads = None  # the cluster has no Kueue
    stub.script(NAME, status(kind, "Suspended"))
    with pytest.raises(JobError, match="the cluster has no Kueue"):
        launcher(stub, kind, pending_timeout=0.3).run(spec(queue_name="srs"), timeout=30,
                                                      follow_logs=False)


@pytest.mark.parametrize("kind", KINDS)
def test_vanished_job(stub, kind):
    stub.script(NAME, status(kind, "Running"), GONE)
    with pytest.raises(JobError, match="disappeared while running"):
        launcher(stub, kind).run(spec(), timeout=30, follow_logs=False)


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_and_cancel(stub, kind):
    stub.script(NAME, status(kind, "Running"))
    with pytest.raises(JobError, match=r"did not finish within 0.3s \(last state Running\)"):
        launcher(stub, kind).run(spec(), timeout=0.3, follow_logs=False)
    assert len(stub.calls("DELETE")) == 1
    run = launcher(stub, kind)
    before = len(stub.calls("GET", f"{PATHS[kind]}/{NAME}"))

    def cancel_later():
        while len(stub.calls("GET", f"{PATHS[kind]}/{NAME}")) < before + 3:
            time.sleep(0.01)
        run.cancel()

    threading.Thread(target=cancel_later, daemon=True).start()
    with pytest.raises(JobError, match="cancelled"):
        run.run(spec(), timeout=30, follow_logs=False)
    assert len(stub.calls("DELETE")) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_log_follow_across_a_restart(stub, kind, caplog):
    first = make_pod(kind)
    stub.pods.append(first)
    stub.logs[first["metadata"]["name"]] = ["first life"]
    state = {}

    def play(server):
        if "second" not in state:
            if not server.log_reads:
                return status(kind, "Running")
            with server.lock:
                if kind == "trainjob":  # JobSet replaces every pod
                    second = trainjob_pod(NAME, 0, attempt=1, created="2025-01-01T00:05:00Z")
                    server.pods[:] = [second]
                    state["second"] = second["metadata"]["name"]
                else:  # the operator restarts the container in place
                    server.pods[0]["status"]["containerStatuses"][0]["restartCount"] = 1
                    state["second"] = first["metadata"]["name"]
                server.logs[state["second"]] = ["second life"]
            return status(kind, "Running")
        done = server.log_reads.get(state["second"], 0) >= (1 if kind == "trainjob" else 2)
        return status(kind, "Succeeded" if done else "Running")

    stub.script(NAME, play)
    assert launcher(stub, kind).run(spec(), timeout=30).state == "Succeeded"
    assert logged(caplog, "first life") == 1 and logged(caplog, "second life") == 1


# -- Trainer v2 objects -------------------------------------------------------------------------
def test_trainjob_validates_and_carries_the_run():
    s = spec(workers=4, gpus_per_worker=8, node_selector={"nvidia.com/gpu.present": "true"},
             tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists",
                           "effect": "NoSchedule"}], shm_size="64Gi", queue_name="srs",
             owner={"name": "step-pod", "uid": "u-1"}, active_deadline_seconds=3600)
    job = render_trainjob(s)
    validate_trainjob(job)
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime", "name": "srs-torch"}
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
    assert trainer["command"] == ["torchrun"] and trainer["args"][:2] == ["-m", "srs_core.cli"]
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e for e in trainer["env"]}
    assert env["SRS_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "srs-minio"
    (patch,) = job["spec"]["runtimePatches"]
    pod_patch = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]
    assert pod_patch["spec"]["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}}]
    assert pod_patch["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "kueue.x-k8s.io/queue-name" not in pod_patch["metadata"]["labels"]
    assert job["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "step-pod", "uid": "u-1",
         "controller": False, "blockOwnerDeletion": False}]
    bad = {**job, "spec": {**job["spec"], "trainer": {**trainer, "numProcPerNode": "8"}}}
    with pytest.raises(ConfigError, match="numProcPerNode"):
        validate_trainjob(bad)


def test_the_shipped_runtime_is_the_rendered_one_and_secure():
    shipped = yaml.safe_load((ROOT / "manifests/trainer/srs-torch.yaml").read_text())
    assert shipped == render_runtime(JobSpec(name="srs-runtime",
                                             image="ghcr.io/srs-kubeflow/srs:0.1.0-cuda"))
    assert shipped["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    (rjob,) = shipped["spec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["template"]["metadata"]["labels"] == {
        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    podspec = rjob["template"]["spec"]["template"]["spec"]
    (container,) = podspec["containers"]
    assert container["name"] == "node"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert podspec["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/dev/shm", *WRITABLE_MOUNTS.values()}


def test_vendored_trainer_crds_are_the_shared_copies():
    for crd in (TRAINJOB_CRD, RUNTIME_CRD):
        if not (SHARED / crd.name).exists():
            pytest.skip("no ../shared checkout next to the repository")
        assert crd.read_bytes() == (SHARED / crd.name).read_bytes()


def test_priority_needs_a_queue():
    with pytest.raises(ConfigError, match="needs a queue_name"):
        render_trainjob(spec(priority_class="high"))


def test_cli_render_and_run_trainjob(stub, tmp_path, monkeypatch, capsys):
    assert main(["job", "render", "--kind", "trainjob", "--with-runtime", "--image", "srs:1",
                 "--queue", "srs", "--", "train"]) == 0
    runtime, job = list(yaml.safe_load_all(capsys.readouterr().out))
    assert (runtime["kind"], job["kind"]) == ("ClusterTrainingRuntime", "TrainJob")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = tmp_path / "config"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: s\n"
        f"clusters: [{{name: s, cluster: {{server: '{stub.url}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: s, context: {cluster: s, user: u}}]\n")
    stub.script(NAME, trainjob_status("Pending"))
    monkeypatch.setenv("SRS_POD_NAME", "step-1")
    monkeypatch.setenv("SRS_POD_UID", "uid-1")
    code = main(["job", "run", "--kind", "trainjob", "--kubeconfig", str(config), "--image",
                 "srs:test", "--name", NAME, "--namespace", NS, "--poll-interval", "0.02",
                 "--pending-timeout", "0.3", "--job-owner", "step", "--", "train"])
    assert code == 1
    body = stub.calls("POST", PATHS["trainjob"])[0].body
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_trainjob_pods_give_a_preempted_run_time_to_checkpoint():
    from srs_core.launch.spec import TERMINATION_GRACE_SECONDS

    job = render_trainjob(spec(termination_grace_seconds=600))
    validate_trainjob(job)
    (patch,) = job["spec"]["runtimePatches"]
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 600
    env = {e["name"]: e.get("value") for e in job["spec"]["trainer"]["env"]}
    assert int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) < 600
    runtime = render_runtime()["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]
    assert runtime["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == \
        TERMINATION_GRACE_SECONDS
