"""The operator's decisions, from cluster state to plan, with no cluster: every transition once."""

from __future__ import annotations

import datetime as dt

from cairn.api import from_manifest
from cairn.api.types import Condition, TrainingRunStatus
from cairn.controller.reconcile import fmt_time, plan, set_condition, store_fields

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
GPU_NODE = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def tr(status=None, **spec):  # noqa: ANN001, ANN003, ANN201
    return from_manifest({"metadata": {"name": "mnist", "namespace": "ml", "uid": "u1", "generation": 1},
            "spec": {"image": "i", "command": ["c"], "backoffLimit": 2, "resources": {"gpus": 1}, **spec},
            "status": status or {}})


def pod(phase, exit_code=None, term_reason="Error", reason=None, unschedulable=None):  # noqa: ANN001, ANN201
    status = {"phase": phase, "startTime": fmt_time(at(1))}
    trainer = {"name": "trainer", "imageID": "docker.io/library/t@sha256:" + "ab" * 32, "state": {}}
    if phase == "Running":
        trainer["state"] = {"running": {"startedAt": fmt_time(at(2))}}
    if exit_code is not None:
        trainer["state"] = {"terminated": {"exitCode": exit_code, "reason": term_reason,
                                           "startedAt": fmt_time(at(2)), "finishedAt": fmt_time(at(9))}}
    status["containerStatuses"] = [trainer]
    if reason:
        status["reason"] = reason
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": unschedulable}]
    return {"metadata": {"name": "mnist-1"}, "spec": {"nodeName": None if unschedulable else "node-a"},
            "status": status}


def condition(status, ctype):  # noqa: ANN001, ANN201
    (found,) = [c for c in status["conditions"] if c["type"] == ctype]
    return found


def readiness(status):  # noqa: ANN001, ANN201
    return {t: condition(status, t)["status"] for t in ("Ready", "Reconciling", "Stalled")}


def waiting_pod(container, reason, message, init=False):  # noqa: ANN001, ANN201
    """A scheduled Pending pod whose ``container`` waits on ``reason``."""
    statuses = [{"name": container, "state": {"waiting": {"reason": reason, "message": message}}}]
    key = "initContainerStatuses" if init else "containerStatuses"
    return {"metadata": {"name": "mnist-1"}, "spec": {"nodeName": "node-a"},
            "status": {"phase": "Pending", key: statuses,
                       "conditions": [{"type": "PodScheduled", "status": "True"}]}}


def test_new_trainingrun_creates_attempt_one():
    p = plan(tr(), None, None, T0)
    assert p.create_attempt == 1
    assert p.status["phase"] == "Pending" and p.status["attempts"] == 1
    assert [e.reason for e in p.events] == ["Created", "PodCreated"]


def test_unschedulable_pod_surfaces_the_schedulers_message():
    msg = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    p = plan(tr({"phase": "Pending", "attempts": 1}), pod("Pending", unschedulable=msg), None, at(5))
    cond = condition(p.status, "Scheduled")
    assert cond == {"type": "Scheduled", "status": "False", "reason": "Unschedulable", "message": msg,
                    "lastTransitionTime": fmt_time(at(5)), "observedGeneration": 1}
    assert p.status["reason"] == "Unschedulable" and p.create_attempt is None


def test_running_pod_records_start_node_gpu_and_digest():
    p = plan(tr({"phase": "Pending", "attempts": 1}), pod("Running"), GPU_NODE, at(5))
    s = p.status
    assert s["phase"] == "Running" and s["startTime"] == fmt_time(at(2))
    assert s["nodeName"] == "node-a" and s["gpuProduct"] == "NVIDIA-H100-80GB-HBM3"
    assert s["imageDigest"] == "sha256:" + "ab" * 32
    assert p.store["status"] == "RUNNING" and p.store["gpu_product"] == "NVIDIA-H100-80GB-HBM3"


def test_cpu_only_run_records_no_gpu_product():
    p = plan(tr({"phase": "Pending", "attempts": 1}, resources={"gpus": 0}), pod("Running"), GPU_NODE, at(5))
    assert "gpuProduct" not in p.status


def test_succeeded_pod_finishes_the_run():
    p = plan(tr({"phase": "Running", "attempts": 1}), pod("Succeeded", exit_code=0), GPU_NODE, at(10))
    assert p.status["phase"] == "Succeeded" and p.status["exitCode"] == 0
    assert p.status["completionTime"] == fmt_time(at(10))
    assert p.store["status"] == "FINISHED" and p.finished_pod is not None
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in p.status["conditions"])


def test_user_error_waits_out_the_backoff_once_then_retries():
    running = {"phase": "Running", "attempts": 1}
    first = plan(tr(running), pod("Failed", exit_code=2), None, at(10))
    assert first.status["failures"] == 1 and first.retried_for == "UserError"
    assert first.status["retryAfter"] == fmt_time(at(15)) and first.create_attempt is None
    waiting = {**running, **first.status}
    again = plan(tr(waiting), pod("Failed", exit_code=2), None, at(12))  # the same pod seen again
    assert again.create_attempt is None and "failures" not in again.status and again.requeue_after == 3
    due = plan(tr(waiting), pod("Failed", exit_code=2), None, at(15))
    assert due.create_attempt == 2 and due.status["retryAfter"] is None


def test_backoff_limit_ends_the_run_failed():
    p = plan(tr({"phase": "Running", "attempts": 3, "failures": 2}), pod("Failed", exit_code=1), None, at(10))
    assert p.status["phase"] == "Failed" and p.status["reason"] == "UserError"
    assert "backoffLimit 2 reached" in p.status["message"] and p.store["status"] == "FAILED"
    assert p.create_attempt is None


def test_oom_counts_and_is_named():
    p = plan(tr({"phase": "Running", "attempts": 1}, backoffLimit=0), pod("Failed", exit_code=137, term_reason="OOMKilled"),
             None, at(10))
    assert p.status["phase"] == "Failed" and p.status["reason"] == "OOMKilled"


def test_infrastructure_failures_do_not_count():
    p = plan(tr({"phase": "Running", "attempts": 1}, backoffLimit=0), pod("Failed", reason="Evicted"), None, at(10))
    assert p.status.get("phase") != "Failed" and "failures" not in p.status
    assert p.retried_for == "Infrastructure" and p.status["retryAfter"] == fmt_time(at(15))


def test_vanished_pod_is_replaced_without_counting():
    p = plan(tr({"phase": "Running", "attempts": 1, "podName": "mnist-1"}), None, None, at(10))
    assert p.create_attempt == 2 and "failures" not in p.status
    assert any(e.reason == "PodLost" for e in p.events)


def test_suspend_deletes_the_pod_and_resume_starts_the_next_attempt():
    p = plan(tr({"phase": "Running", "attempts": 1}, suspend=True), pod("Running"), None, at(10))
    assert p.delete_pod == "mnist-1" and p.status["phase"] == "Suspended"
    suspended = {"phase": "Suspended", "attempts": 1, **p.status}
    still = plan(tr(suspended, suspend=True), None, None, at(20))
    assert still.create_attempt is None and still.delete_pod is None
    resumed = plan(tr(suspended, suspend=False), None, None, at(30))
    assert resumed.create_attempt == 2 and resumed.status["phase"] == "Pending"


def test_deadline_over_all_attempts_fails_the_run():
    status = {"phase": "Running", "attempts": 2, "startTime": fmt_time(T0)}
    p = plan(tr(status, activeDeadlineSeconds=60), pod("Running"), None, at(61))
    assert p.status["phase"] == "Failed" and p.status["reason"] == "DeadlineExceeded" and p.delete_pod == "mnist-1"
    early = plan(tr(status, activeDeadlineSeconds=60), pod("Running"), None, at(30))
    assert early.status["phase"] == "Running" and early.requeue_after == 30


def test_ttl_deletes_the_finished_trainingrun():
    done = {"phase": "Succeeded", "attempts": 1, "completionTime": fmt_time(T0)}
    assert plan(tr(done, ttlSecondsAfterFinished=60), None, None, at(30)).requeue_after == 30
    assert plan(tr(done, ttlSecondsAfterFinished=60), None, None, at(60)).delete_trainingrun
    assert not plan(tr(done), None, None, at(6000)).delete_trainingrun


def test_non_scalar_param_fails_before_any_pod():
    p = plan(tr(params={"lr": 0.1, "layers": [1, 2]}), None, None, T0)
    assert p.create_attempt is None and p.status["phase"] == "Failed"
    assert p.status["message"].startswith("spec.params.layers:")


def test_condition_transition_time_moves_only_when_status_changes():
    c1 = set_condition([], "Scheduled", False, "Unschedulable", "no gpu", 1, at(0))
    c2 = set_condition(c1, "Scheduled", False, "Unschedulable", "still no gpu", 2, at(10))
    assert c2 == [Condition(type="Scheduled", status="False", reason="Unschedulable", message="still no gpu",
                            last_transition_time=fmt_time(at(0)), observed_generation=2)]
    c3 = set_condition(c2, "Scheduled", True, "Scheduled", "ok", 2, at(20))
    assert c3[0].last_transition_time == fmt_time(at(20)) and c3[0].status == "True"
    c4 = set_condition(c3, "Retrying", False, "Running", "ok", 2, at(30))
    assert [c.type for c in c4] == ["Scheduled", "Retrying"] and c4[0] == c3[0]


def test_store_fields_mirror_status():
    fields = store_fields(TrainingRunStatus(phase="Succeeded", attempts=2, node_name="n", exit_code=0,
                                            completion_time=fmt_time(at(5))))
    assert fields == {"attempts": 2, "status": "FINISHED", "node_name": "n", "exit_code": 0, "end_time": at(5)}


def test_start_error_is_the_users_and_backoff_limit_zero_fails_at_once():
    failed = pod("Failed", exit_code=128, term_reason="StartError")
    failed["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = (
        'failed to create containerd task: exec: "pyhton": executable file not found in $PATH: unknown')
    p = plan(tr({"phase": "Pending", "attempts": 1}, backoffLimit=0), failed, None, at(10))
    assert p.status["phase"] == "Failed" and p.status["reason"] == "StartError"
    assert "spec.command" in p.status["message"] and '"pyhton": executable file not found' in p.status["message"]
    assert p.status["failures"] == 1 and p.create_attempt is None and p.status["exitCode"] == 128


def test_infrastructure_failures_stop_at_their_limit():
    evicted = pod("Failed", reason="Evicted")
    evicted["status"]["message"] = "The node was low on resource: memory."
    within = plan(tr({"phase": "Running", "attempts": 3, "infrastructureRetries": 2}, infrastructureRetryLimit=3),
                  evicted, None, at(10))
    assert within.status["infrastructureRetries"] == 3 and within.status["retryAfter"] == fmt_time(at(15))
    past = plan(tr({"phase": "Running", "attempts": 4, "infrastructureRetries": 3}, infrastructureRetryLimit=3),
                evicted, None, at(10))
    assert past.status["phase"] == "Failed" and past.status["reason"] == "Infrastructure"
    assert past.status["message"] == ("Evicted: The node was low on resource: memory.; "
                                      "infrastructureRetryLimit 3 reached")
    assert past.status["infrastructureRetries"] == 4 and past.create_attempt is None and "retryAfter" in past.status


def test_lost_pods_count_against_the_infrastructure_limit():
    status = {"phase": "Running", "attempts": 1, "podName": "mnist-1", "infrastructureRetries": 1}
    p = plan(tr(status, infrastructureRetryLimit=1), None, None, at(10))
    assert p.status["phase"] == "Failed" and p.create_attempt is None
    assert p.status["message"] == "pod mnist-1 disappeared; infrastructureRetryLimit 1 reached"


def test_a_failed_prepare_step_counts_against_the_infrastructure_limit():
    failed = {"metadata": {"name": "mnist-2"}, "spec": {"nodeName": "node-a"}, "status": {
        "phase": "Failed", "initContainerStatuses": [
            {"name": "cairn-prepare", "state": {"terminated": {"exitCode": 1, "message": "store unreachable"}}}],
        "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "PodInitializing"}}}]}}
    p = plan(tr({"phase": "Pending", "attempts": 2, "infrastructureRetries": 0}, infrastructureRetryLimit=0),
             failed, None, at(10))
    assert p.status["phase"] == "Failed" and p.status["reason"] == "Infrastructure"
    assert p.status["message"].startswith("the prepare step failed (exit code 1): store unreachable")


def test_a_full_run_volume_counts_against_backoff_limit():
    evicted = pod("Failed", reason="Evicted")
    evicted["status"]["message"] = 'Usage of EmptyDir volume "run" exceeds the limit "50Gi". '
    evicted["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                        "reason": "TerminationByKubelet"}]
    p = plan(tr({"phase": "Running", "attempts": 1}, backoffLimit=0), evicted, None, at(10))
    assert p.status["phase"] == "Failed" and p.status["reason"] == "RunVolumeFull"
    assert "spec.runVolumeSizeLimit" in p.status["message"] and "infrastructureRetries" not in p.status


def test_image_pull_backoff_is_surfaced_with_a_hint_and_one_event_per_kind():
    msg = 'Back-off pulling image "registry.example/trainer:nope"'
    p = plan(tr({"phase": "Pending", "attempts": 1}, image="registry.example/trainer:nope"),
             waiting_pod("trainer", "ImagePullBackOff", msg), None, at(5))
    assert p.status["phase"] == "Pending" and p.status["reason"] == "ImagePullBackOff"
    assert p.status["message"].startswith(f"container trainer: ImagePullBackOff: {msg}; check spec.image")
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "ImagePullBackOff")]
    assert readiness(p.status) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    assert p.requeue_after == 900 and p.delete_pod is None
    # The kubelet's next try shows ErrImagePull: the same trouble, no second Event; the deadline holds.
    seen = {"phase": "Pending", "attempts": 1, **p.status}
    again = plan(tr(seen), waiting_pod("trainer", "ErrImagePull", "manifest unknown"), None, at(65))
    assert again.status["reason"] == "ErrImagePull" and again.events == []
    assert again.requeue_after == 840


def test_a_missing_database_secret_names_the_secret_to_create():
    msg = 'secret "cairn-database" not found'
    p = plan(tr({"phase": "Pending", "attempts": 1}),
             waiting_pod("cairn-sidecar", "CreateContainerConfigError", msg, init=True), None, at(5))
    assert p.status["reason"] == "CreateContainerConfigError"
    assert f"container cairn-sidecar: CreateContainerConfigError: {msg}; " in p.status["message"]
    assert "Secret in namespace ml" in p.status["message"] and "cairn-database, key url" in p.status["message"]
    assert [e.reason for e in p.events] == ["CreateContainerConfigError"]


def test_a_pod_stuck_past_the_pending_deadline_fails_the_run():
    first = plan(tr({"phase": "Pending", "attempts": 1}, pendingDeadlineSeconds=60),
                 waiting_pod("trainer", "InvalidImageName", 'invalid reference format: "Trainer:1"'), None, at(5))
    stalled = {"phase": "Pending", "attempts": 1, **first.status}
    early = plan(tr(stalled, pendingDeadlineSeconds=60), waiting_pod("trainer", "InvalidImageName", "x"), None, at(64))
    assert early.status["phase"] == "Pending" and early.requeue_after == 1
    late = plan(tr(stalled, pendingDeadlineSeconds=60), waiting_pod("trainer", "InvalidImageName", "x"), None, at(65))
    assert late.status["phase"] == "Failed" and late.status["reason"] == "InvalidImageName"
    assert late.status["message"].endswith("(stuck for 60s, spec.pendingDeadlineSeconds)")
    assert late.delete_pod == "mnist-1" and readiness(late.status)["Stalled"] == "True"


def test_a_pod_pulling_its_image_is_not_stuck():
    p = plan(tr({"phase": "Pending", "attempts": 1}), waiting_pod("trainer", "ContainerCreating", ""), None, at(5))
    assert p.status["reason"] == "PodPending" and p.events == [] and p.requeue_after is None
    assert readiness(p.status) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}


def test_ready_follows_the_phase():
    running = plan(tr({"phase": "Pending", "attempts": 1}), pod("Running"), None, at(5))
    assert readiness(running.status) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    done = plan(tr({"phase": "Running", "attempts": 1}), pod("Succeeded", exit_code=0), None, at(10))
    assert readiness(done.status) == {"Ready": "True", "Reconciling": "False", "Stalled": "False"}
    failed = plan(tr({"phase": "Running", "attempts": 1}, backoffLimit=0), pod("Failed", exit_code=1), None, at(10))
    assert readiness(failed.status) == {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    assert condition(failed.status, "Stalled")["reason"] == "UserError"
    retrying = plan(tr({"phase": "Running", "attempts": 1}), pod("Failed", exit_code=1), None, at(10))
    assert retrying.status.get("phase") is None and retrying.status["retryAfter"] == fmt_time(at(15))
    assert readiness(retrying.status) == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}
    assert condition(retrying.status, "Ready")["reason"] == "UserError"
    suspended = plan(tr({"phase": "Running", "attempts": 1}, suspend=True), pod("Running"), None, at(10))
    assert readiness(suspended.status) == {"Ready": "False", "Reconciling": "False", "Stalled": "False"}


def test_run_id_is_the_trainingrun_uid_and_set_once():
    p = plan(tr(), None, None, T0)
    assert p.status["runId"] == "u1"
    again = plan(tr({"phase": "Pending", "attempts": 1, "runId": "u1"}), pod("Pending"), None, at(1))
    assert "runId" not in again.status


def test_running_plans_say_since_when_the_pod_runs():
    assert plan(tr({"phase": "Pending", "attempts": 1}), pod("Running"), None, at(5)).running_since == at(1)
    assert plan(tr({"phase": "Running", "attempts": 1}), pod("Succeeded", exit_code=0), None,
                at(10)).running_since is None
