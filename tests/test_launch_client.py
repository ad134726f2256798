"""PyTorchJobLauncher against a loopback stub of the Kubernetes API (no real cluster here).

The stub (tests/launch_stub.py) speaks the REST shapes of the Kubernetes / Training Operator
API, records every request and plays scripted job statuses.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

import pytest
from kubernetes.client import Configuration
from launch_stub import GONE, StubApiServer, conditions, event, pod

from srs_core.cli import main
from srs_core.errors import JobError
from srs_core.launch import JobSpec, PyTorchJobLauncher, kube_configuration, render_pytorchjob

NS = "srs"
NAME = "srs-train-run1"
MASTER = f"{NAME}-master-0"
JOBS = f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs"


@pytest.fixture()
def stub():
    server = StubApiServer().start()
    yield server
    server.stop()


@pytest.fixture()
def spec() -> JobSpec:
    return JobSpec(name=NAME, namespace=NS, image="srs:test", workers=2, run_id="run1",
                   train_args=["train", "--preset", "tiny"], checkpoint_uri="s3://b/runs/run1")


def launcher_for(stub: StubApiServer, **kwargs) -> PyTorchJobLauncher:
    options = {"poll_interval": 0.02, "request_timeout": 5, "log_drain_timeout": 5, **kwargs}
    return PyTorchJobLauncher(Configuration(host=stub.url), **options)


def after_log_read(state: str, then: str, pod_name: str = MASTER, reads: int = 1):
    """Script step: ``state`` until the master's log was streamed ``reads`` times, then ``then``."""
    return lambda stub: conditions(then if stub.log_reads.get(pod_name, 0) >= reads else state)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="srs_core.launch")


def test_created_running_succeeded_streams_logs_and_deletes(stub, spec, caplog):
    stub.pods.append(pod(NAME))
    stub.logs[MASTER] = ["epoch 1 loss 0.9", "epoch 2 loss 0.5"]
    stub.script(NAME, conditions("Created"), conditions("Running"),
                after_log_read("Running", "Succeeded"))
    outcome = launcher_for(stub).run(spec, timeout=30, cleanup="on-success")

    assert (outcome.state, outcome.created, outcome.deleted) == ("Succeeded", True, True)
    posts = stub.calls("POST", JOBS)
    assert len(posts) == 1 and posts[0].body == render_pytorchjob(spec)
    # The stream is re-read while the container runs; every line is logged exactly once.
    assert stub.log_reads[MASTER] >= 1
    assert logged(caplog, "epoch 1 loss 0.9") == 1 and logged(caplog, "epoch 2 loss 0.5") == 1
    deletes = stub.calls("DELETE", f"{JOBS}/{NAME}")
    assert len(deletes) == 1 and deletes[0].body["propagationPolicy"] == "Foreground"
    log_calls = stub.calls("GET", f"/pods/{MASTER}/log")
    # The Python client sends "True"; the API server's ParseBool accepts it.
    assert log_calls[0].query["container"] == "pytorch"
    assert log_calls[0].query["follow"].lower() == "true"


def test_failed_job_fails_the_step_and_says_why(stub, spec):
    stub.pods += [pod(NAME, exit_code=137, reason="OOMKilled", restarts=3),
                  pod(NAME, "worker", 0)]
    stub.logs[MASTER] = ["loading stickers", "RuntimeError: CUDA out of memory"]
    stub.events += [
        event(MASTER, "Pod", "BackOff", "Back-off restarting failed container pytorch"),
        event(NAME, "PyTorchJob", "PyTorchJobFailed", "job failed", type_="Normal"),
        event("other-job-master-0", "Pod", "BackOff", "not ours"),
    ]
    failed = conditions("Failed", "PyTorchJobFailed",
                        f"PyTorchJob {NS}/{NAME} is failed because 1 Master replica(s) failed.")
    stub.script(NAME, conditions("Running"), lambda s: failed if s.log_reads else
                conditions("Running"))
    with pytest.raises(JobError) as info:
        launcher_for(stub).run(spec, timeout=30, cleanup="on-success")
    message = str(info.value)
    assert "PyTorchJobFailed" in message and "1 Master replica(s) failed" in message
    assert "exited with code 137 (OOMKilled), 3 restart(s)" in message
    assert "BackOff: Back-off restarting failed container" in message
    assert "not ours" not in message and "job failed" not in message  # other job, Normal
    assert "CUDA out of memory" in message  # the master's last log lines
    assert stub.calls("DELETE") == []  # on-success keeps a failed job for inspection
    assert stub.calls("GET", "/events")[0].query == {"fieldSelector": "type=Warning"}


def test_cleanup_always_deletes_a_failed_job(stub, spec):
    stub.script(NAME, conditions("Failed", "PyTorchJobFailed", "boom"))
    with pytest.raises(JobError, match="boom"):
        launcher_for(stub).run(spec, timeout=30, cleanup="always", follow_logs=False)
    assert len(stub.calls("DELETE", f"{JOBS}/{NAME}")) == 1


def test_restarting_is_still_running(stub, spec, caplog):
    stub.script(NAME, conditions("Running"), conditions("Restarting"), conditions("Running"),
                conditions("Succeeded"))
    outcome = launcher_for(stub).run(spec, timeout=30, cleanup="never", follow_logs=False)
    assert (outcome.state, outcome.restarts, outcome.deleted) == ("Succeeded", 1, False)
    assert any(r.levelno == logging.WARNING and "is Restarting" in r.getMessage()
               for r in caplog.records)
    assert stub.calls("DELETE") == []


def test_log_follower_dedupes_reconnects_and_follows_a_restart(stub, spec, caplog):
    stub.pods.append(pod(NAME))
    stub.logs[MASTER] = ["first container line"]

    restarted_at: list[int] = []

    def play(server: StubApiServer):
        reads = server.log_reads.get(MASTER, 0)
        if not restarted_at:
            if reads < 2:  # the first container's log was streamed, then re-opened
                return conditions("Running")
            with server.lock:  # the container restarts: its log begins anew
                server.pods[0]["status"]["containerStatuses"][0]["restartCount"] = 1
                server.logs[MASTER] = ["second container line"]
            restarted_at.append(reads)
            return conditions("Restarting")
        return conditions("Running" if reads < restarted_at[0] + 2 else "Succeeded")

    stub.script(NAME, play)
    outcome = launcher_for(stub).run(spec, timeout=30)
    assert (outcome.state, outcome.restarts) == ("Succeeded", 1)
    assert logged(caplog, "first container line") == 1
    assert logged(caplog, "second container line") == 1


def test_vanished_job_is_a_clear_error(stub, spec):
    stub.script(NAME, conditions("Running"), GONE)
    with pytest.raises(JobError, match="disappeared while running"):
        launcher_for(stub).run(spec, timeout=30, follow_logs=False)
    assert stub.calls("DELETE") == []


@pytest.mark.parametrize(("cleanup", "deletes"), [("on-success", 1), ("never", 0)])
def test_timeout_raises_and_cancels_unless_kept(stub, spec, cleanup, deletes):
    stub.script(NAME, conditions("Running"))
    with pytest.raises(JobError, match=r"did not finish within 0.3s \(last state Running\)"):
        launcher_for(stub).run(spec, timeout=0.3, cleanup=cleanup, follow_logs=False)
    assert len(stub.calls("DELETE", f"{JOBS}/{NAME}")) == deletes


def test_existing_job_is_adopted_not_created_twice(stub, spec):
    stub.add_job(render_pytorchjob(spec), conditions("Running"))
    stub.script(NAME, conditions("Running"), conditions("Succeeded"))
    outcome = launcher_for(stub).run(spec, timeout=30, follow_logs=False)
    assert (outcome.state, outcome.created) == ("Succeeded", False)
    assert stub.calls("POST") == []


def test_job_of_another_run_is_not_adopted(stub, spec):
    other = render_pytorchjob(spec.with_overrides(run_id="run0"))
    stub.add_job(other, conditions("Running"))
    with pytest.raises(JobError, match="already exists for run 'run0', not 'run1'"):
        launcher_for(stub).run(spec, timeout=30, follow_logs=False)
    assert stub.calls("POST") == [] and stub.calls("DELETE") == []


def test_replace_failed_deletes_the_old_job_and_creates_a_new_one(stub, spec):
    stub.add_job(render_pytorchjob(spec), conditions("Failed", "PyTorchJobFailed", "old"))
    stub.script(NAME, conditions("Failed", "PyTorchJobFailed", "old"))
    launcher = launcher_for(stub)
    assert launcher.submit(spec, replace_failed=True) is True
    methods = [r.method for r in stub.requests if r.path.startswith(JOBS)]
    assert methods[:2] == ["GET", "DELETE"] and methods[-1] == "POST"


def test_conflict_on_create_adopts_the_job_that_won(stub, spec):
    stub.conflict_job = render_pytorchjob(spec)
    assert launcher_for(stub).submit(spec) is False
    assert len(stub.calls("POST")) == 1 and len(stub.jobs) == 1


def test_forbidden_create_names_the_missing_permission(stub, spec):
    stub.create_error = 403
    with pytest.raises(JobError, match="srs-pipeline-runner Role"):
        launcher_for(stub).run(spec, timeout=30)


def test_transient_api_errors_are_retried_then_given_up(stub, spec):
    stub.job_errors += [500, 503]
    stub.add_job(render_pytorchjob(spec))
    stub.script(NAME, conditions("Succeeded"))
    launcher = launcher_for(stub, max_api_failures=2)
    assert launcher.watch(NAME, NS, timeout=30).state == "Succeeded"
    stub.job_errors += [500, 500, 500]
    with pytest.raises(JobError, match="cannot read PyTorchJob"):
        launcher.watch(NAME, NS, timeout=30)


def _when_running(stub: StubApiServer, action) -> threading.Thread:
    def wait_then_act() -> None:
        deadline = time.monotonic() + 20
        while len(stub.calls("GET", f"{JOBS}/{NAME}")) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def test_cancel_deletes_the_job(stub, spec):
    stub.script(NAME, conditions("Running"))
    launcher = launcher_for(stub)
    _when_running(stub, launcher.cancel)
    with pytest.raises(JobError, match="cancelled"):
        launcher.run(spec, timeout=30, follow_logs=False)
    assert len(stub.calls("DELETE", f"{JOBS}/{NAME}")) == 1


def test_sigterm_cancels_the_job_and_restores_the_handler(stub, spec):
    stub.script(NAME, conditions("Running"))
    before = signal.getsignal(signal.SIGTERM)
    _when_running(stub, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(JobError, match="cancelled"):
        launcher_for(stub).run(spec, timeout=30, follow_logs=False)
    assert len(stub.calls("DELETE", f"{JOBS}/{NAME}")) == 1
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_while_the_job_is_being_created_still_deletes_it(stub, spec):
    stub.on_create = lambda: os.kill(os.getpid(), signal.SIGTERM)  # before run() knows the job
    stub.script(NAME, conditions("Running"))
    with pytest.raises(JobError, match="cancelled"):
        launcher_for(stub).run(spec, timeout=30, follow_logs=False)
    assert len(stub.calls("POST")) == 1 and stub.jobs == {}


def test_kubeconfig_is_used_when_not_in_a_pod(stub, spec, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: stub\n"
        f"clusters: [{{name: stub, cluster: {{server: '{stub.url}'}}}}]\n"
        "users: [{name: runner, user: {token: test-token}}]\n"
        "contexts: [{name: stub, context: {cluster: stub, user: runner, namespace: srs}}]\n")
    stub.script(NAME, conditions("Succeeded"))
    launcher = PyTorchJobLauncher(kube_configuration(str(kubeconfig)), poll_interval=0.02)
    launcher.run(spec, timeout=30, follow_logs=False)
    assert {r.headers.get("authorization") for r in stub.requests} == {"Bearer test-token"}


def test_cli_job_run_against_the_stub(stub, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: stub\n"
        f"clusters: [{{name: stub, cluster: {{server: '{stub.url}'}}}}]\n"
        "users: [{name: runner, user: {token: t}}]\n"
        "contexts: [{name: stub, context: {cluster: stub, user: runner}}]\n")
    stub.script(NAME, conditions("Running"), conditions("Succeeded"))
    code = main(["job", "run", "--kubeconfig", str(kubeconfig), "--image", "srs:test",
                 "--name", NAME, "--namespace", NS, "--poll-interval", "0.02",
                 "--timeout", "30", "--cleanup", "never", "--", "train", "--preset", "tiny"])
    outcome = json.loads(capsys.readouterr().out)
    assert code == 0 and outcome["state"] == "Succeeded" and outcome["deleted"] is False
    container = stub.calls("POST")[0].body["spec"]["pytorchReplicaSpecs"]["Master"]
    assert container["template"]["spec"]["containers"][0]["args"][2:] == [
        "train", "--preset", "tiny"]


def test_missing_kubeconfig_is_a_job_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(JobError, match="no Kubernetes credentials"):
        kube_configuration(str(tmp_path / "absent"))


def test_unknown_cleanup_policy_is_rejected_before_any_request(stub, spec):
    with pytest.raises(JobError, match="cleanup='sometimes'"):
        launcher_for(stub).run(spec, cleanup="sometimes")
    assert stub.requests == []
