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
from srs_core.errors import ConfigError, JobError
from srs_core.launch import JobSpec, PyTorchJobLauncher, kube_configuration, render_pytorchjob
from srs_core.launch.kube import DEFAULT_REQUEST_TIMEOUT, request_timeout_from_env

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


def hang_after(stub: StubApiServer, job_gets: int) -> None:
    """From the ``job_gets + 1``-th GET of the job on, the stub answers no request at all."""
    stub.hang = lambda request: len(stub.calls("GET", f"{JOBS}/{NAME}")) > job_gets


def write_kubeconfig(path, server: str, token: str = "t", namespace: str = "") -> str:
    context = f", namespace: {namespace}" if namespace else ""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: stub\n"
        f"clusters: [{{name: stub, cluster: {{server: '{server}'}}}}]\n"
        f"users: [{{name: runner, user: {{token: {token}}}}}]\n"
        f"contexts: [{{name: stub, context: {{cluster: stub, user: runner{context}}}}}]\n")
    return str(path)


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
    # List calls are bounded on the server too (timeoutSeconds = the request timeout, 5s).
    assert stub.calls("GET", "/events")[0].query == {"fieldSelector": "type=Warning",
                                                     "timeoutSeconds": "5"}
    pod_lists = [r for r in stub.calls("GET", "/pods") if r.path.endswith("/pods")]
    assert pod_lists and all(r.query["timeoutSeconds"] == "5" for r in pod_lists)


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


@pytest.mark.parametrize("cleanup", ["on-success", "never"])
def test_hung_api_server_ends_the_run_within_timeout_plus_one_request_timeout(stub, spec,
                                                                              cleanup):
    stub.pods.append(pod(NAME))
    stub.logs[MASTER] = ["epoch 1 loss 0.9"]
    stub.script(NAME, conditions("Running"))
    hang_after(stub, job_gets=3)  # the submit's GET and two polls are answered
    launcher = launcher_for(stub, request_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(JobError) as info:
        launcher.run(spec, timeout=2.0, cleanup=cleanup)
    elapsed = time.monotonic() - began
    launcher.close()
    # The last poll is cut to the deadline; only the cleanup DELETE may add a request timeout.
    assert 2.0 <= elapsed < 2.0 + (1.0 if cleanup == "on-success" else 0.0) + 0.75
    message = str(info.value)
    assert f"{NS}/{NAME} did not finish within 2s (last state Running)" in message
    assert f"cannot read PyTorchJob {NS}/{NAME}: the Kubernetes API server at {stub.url} " \
           "did not answer within" in message
    deletes = stub.calls("DELETE", f"{JOBS}/{NAME}")
    if cleanup == "on-success":  # tried, failed, and said so without hiding the timeout
        assert len(deletes) == 1
        assert (f"it was not deleted (cannot delete PyTorchJob {NS}/{NAME}: the Kubernetes API "
                f"server at {stub.url} did not answer within 1s); delete it with: kubectl -n "
                f"{NS} delete pytorchjob {NAME}") in message
    else:
        assert deletes == [] and "not deleted" not in message


def test_hung_api_server_at_submit_fails_after_one_request_timeout(stub, spec):
    stub.hang = lambda request: True
    began = time.monotonic()
    with pytest.raises(JobError, match=rf"cannot read PyTorchJob {NS}/{NAME}: the Kubernetes "
                                       r"API server at http://127\.0\.0\.1:\d+ did not answer "
                                       r"within 0\.5s$"):
        launcher_for(stub, request_timeout=0.5).run(spec, timeout=30)
    assert time.monotonic() - began < 0.5 + 0.75
    assert len(stub.requests) == 1  # urllib3 did not retry it behind the launcher's back


def test_hung_api_server_without_a_timeout_gives_up_after_max_api_failures(stub, spec):
    stub.add_job(render_pytorchjob(spec), conditions("Running"))
    stub.hang = lambda request: True
    launcher = launcher_for(stub, request_timeout=0.3, max_api_failures=2)
    with pytest.raises(JobError, match=r"did not answer within 0\.3s \(3 requests in a row "
                                       r"failed\); the job is left as it is: a retry of this "
                                       r"step adopts it"):
        launcher.watch(NAME, NS)
    assert len(stub.calls("GET")) == 3


def test_unreachable_api_server_is_named(spec):
    server = StubApiServer().start()
    url = server.url
    server.stop()  # nothing listens on the port any more
    launcher = PyTorchJobLauncher(Configuration(host=url), request_timeout=2)
    with pytest.raises(JobError, match=rf"the Kubernetes API server at {url} could not be "
                                       r"reached \(NewConnectionError"):
        launcher.get(NAME, NS)


def test_silent_log_stream_is_reopened_without_repeating_lines(stub, spec, caplog):
    stub.pods.append(pod(NAME))
    stub.logs[MASTER] = ["epoch 1 loss 0.9"]
    stub.silent_logs = True  # the stream never ends by itself: only the idle timeout cuts it
    stub.script(NAME, after_log_read("Running", "Succeeded", reads=3))
    outcome = launcher_for(stub, log_idle_timeout=0.2).run(spec, timeout=30)
    assert outcome.state == "Succeeded" and stub.log_reads[MASTER] >= 3
    assert logged(caplog, "epoch 1 loss 0.9") == 1


@pytest.mark.parametrize(("value", "seconds"), [(None, DEFAULT_REQUEST_TIMEOUT), ("", 30.0),
                                                ("2.5", 2.5), (" 10 ", 10.0)])
def test_request_timeout_comes_from_the_environment(value, seconds):
    env = {} if value is None else {"SRS_K8S_TIMEOUT": value}
    assert request_timeout_from_env(env) == seconds


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_bad_request_timeout_is_a_config_error(value):
    with pytest.raises(ConfigError, match=f"SRS_K8S_TIMEOUT='{value}'"):
        request_timeout_from_env({"SRS_K8S_TIMEOUT": value})


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
    kubeconfig = write_kubeconfig(tmp_path / "config", stub.url, "test-token", namespace=NS)
    stub.script(NAME, conditions("Succeeded"))
    launcher = PyTorchJobLauncher(kube_configuration(kubeconfig), poll_interval=0.02)
    launcher.run(spec, timeout=30, follow_logs=False)
    assert {r.headers.get("authorization") for r in stub.requests} == {"Bearer test-token"}


def test_cli_job_run_against_the_stub(stub, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = write_kubeconfig(tmp_path / "config", stub.url)
    stub.script(NAME, conditions("Running"), conditions("Succeeded"))
    code = main(["job", "run", "--kubeconfig", kubeconfig, "--image", "srs:test",
                 "--name", NAME, "--namespace", NS, "--poll-interval", "0.02",
                 "--timeout", "30", "--cleanup", "never", "--", "train", "--preset", "tiny"])
    outcome = json.loads(capsys.readouterr().out)
    assert code == 0 and outcome["state"] == "Succeeded" and outcome["deleted"] is False
    container = stub.calls("POST")[0].body["spec"]["pytorchReplicaSpecs"]["Master"]
    assert container["template"]["spec"]["containers"][0]["args"][2:] == [
        "train", "--preset", "tiny"]


def test_cli_job_run_timeout_holds_when_the_api_server_stops_answering(stub, tmp_path,
                                                                       monkeypatch, caplog):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("SRS_K8S_TIMEOUT", "1")
    kubeconfig = write_kubeconfig(tmp_path / "config", stub.url)
    stub.script(NAME, conditions("Running"))
    hang_after(stub, job_gets=2)
    began = time.monotonic()
    code = main(["job", "run", "--kubeconfig", kubeconfig, "--image", "srs:test", "--name",
                 NAME, "--namespace", NS, "--poll-interval", "0.05", "--timeout", "2",
                 "--", "train", "--preset", "tiny"])
    assert code == 1 and time.monotonic() - began < 2 + 1 + 0.75  # + the cleanup DELETE's 1s
    assert f"the Kubernetes API server at {stub.url} did not answer within 1s" in caplog.text


def test_missing_kubeconfig_is_a_job_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(JobError, match="no Kubernetes credentials"):
        kube_configuration(str(tmp_path / "absent"))


def test_unknown_cleanup_policy_is_rejected_before_any_request(stub, spec):
    with pytest.raises(JobError, match="cleanup='sometimes'"):
        launcher_for(stub).run(spec, cleanup="sometimes")
    assert stub.requests == []
