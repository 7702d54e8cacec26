"""Pod building and pod reading: pure functions, checked case by case."""

from __future__ import annotations

import pytest

from cairn.api import from_manifest
from cairn.podspec import (FailureKind, PodSettings, build_pod, classify_pod_failure, pod_name, retry_delay,
                           trainer_env)


def tr(**spec):  # noqa: ANN003, ANN201
    return from_manifest({"metadata": {"name": "mnist", "namespace": "ml", "uid": "uid-1"},
                          "spec": {"image": "trainer:1", "command": ["python3", "train.py"], **spec}})


def containers(pod):  # noqa: ANN001, ANN201
    (sidecar,) = pod["spec"]["initContainers"]
    (trainer,) = pod["spec"]["containers"]
    return sidecar, trainer


def env_of(container) -> dict:  # noqa: ANN001
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_pod_names_are_deterministic_and_fit():
    assert pod_name("mnist", 1) == "mnist-1"
    assert pod_name("mnist", 1) == pod_name("mnist", 1) != pod_name("mnist", 2)
    long = "x" * 70
    assert len(pod_name(long, 12)) <= 63 and pod_name(long, 12).endswith("-12")
    assert pod_name(long, 1) != pod_name("x" * 69 + "y", 1)


def test_same_inputs_build_the_same_pod():
    assert build_pod(tr(), PodSettings(), 1, "r") == build_pod(tr(), PodSettings(), 1, "r")


def test_sidecar_is_a_native_sidecar_with_the_only_database_credentials():
    sidecar, trainer = containers(build_pod(tr(), PodSettings(database_secret="db"), 1, "run-1"))
    assert sidecar["restartPolicy"] == "Always" and sidecar["command"] == ["cairn", "sidecar"]
    assert env_of(sidecar)["CAIRN_DATABASE_URL"] == {"secretKeyRef": {"name": "db", "key": "url"}}
    assert "CAIRN_DATABASE_URL" not in env_of(trainer)
    assert not any("secret" in str(e).lower() for e in trainer["env"])
    assert sidecar["startupProbe"]["exec"]["command"][-1] == "/cairn/run/.sidecar-ready"
    assert sidecar["volumeMounts"] == trainer["volumeMounts"] == [{"name": "run", "mountPath": "/cairn/run"}]


def test_trainer_env_tells_the_sdk_everything():
    t = tr(params={"lr": 0.1, "opt": "adam"}, experiment="exp", code={"commit": "abcdef1", "repository": "r"},
           dataset={"uri": "s3://data/x"}, env=[{"name": "CAIRN_RUN_ID", "value": "spoofed"}, {"name": "A", "value": "1"}])
    env = trainer_env(t, 2, "run-9")
    names = [e["name"] for e in env]
    values = {e["name"]: e["value"] for e in env}  # later entries win, as in Kubernetes
    assert values["CAIRN_RUN_ID"] == "run-9" and names.index("CAIRN_RUN_ID", 1) > names.index("A")
    assert values["CAIRN_PARAMS"] == '{"lr": 0.1, "opt": "adam"}' and values["CAIRN_ATTEMPT"] == "2"
    assert values["CAIRN_EXPERIMENT"] == "exp" and values["CAIRN_RUN_NAME"] == "mnist"
    assert values["CAIRN_CODE_COMMIT"] == "abcdef1" and values["CAIRN_DATASET_URI"] == "s3://data/x"


def test_gpus_become_limits_node_selection_and_a_toleration():
    pod = build_pod(tr(resources={"gpus": 2, "gpuType": "NVIDIA-A100", "cpu": "4", "memory": "16Gi"},
                       nodeSelector={"zone": "a"}), PodSettings(), 1, "r")
    _, trainer = containers(pod)
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "2", "cpu": "4", "memory": "16Gi"}
    assert trainer["resources"]["requests"] == trainer["resources"]["limits"]
    assert pod["spec"]["nodeSelector"] == {"zone": "a", "nvidia.com/gpu.product": "NVIDIA-A100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]


def test_cpu_only_pod_has_no_gpu_bits():
    pod = build_pod(tr(), PodSettings(), 1, "r")
    _, trainer = containers(pod)
    assert trainer["resources"] == {} and "nodeSelector" not in pod["spec"] and "tolerations" not in pod["spec"]


def test_user_tolerations_priority_and_service_account_pass_through():
    pod = build_pod(tr(tolerations=[{"key": "spot", "operator": "Exists"}], priorityClassName="high",
                       serviceAccountName="trainer"), PodSettings(), 1, "r")
    assert pod["spec"]["tolerations"] == [{"key": "spot", "operator": "Exists"}]
    assert pod["spec"]["priorityClassName"] == "high" and pod["spec"]["serviceAccountName"] == "trainer"
    assert pod["spec"]["automountServiceAccountToken"] is True
    assert build_pod(tr(), PodSettings(), 1, "r")["spec"]["automountServiceAccountToken"] is False


def test_pod_is_owned_labelled_and_locked_down():
    pod = build_pod(tr(), PodSettings(image_pull_policy="Never"), 3, "run-1")
    meta = pod["metadata"]
    assert meta["name"] == "mnist-3" and meta["namespace"] == "ml"
    assert meta["labels"] == {"cairn.dev/trainingrun": "mnist", "cairn.dev/run-id": "run-1", "cairn.dev/attempt": "3"}
    (owner,) = meta["ownerReferences"]
    assert owner == {"apiVersion": "cairn.dev/v1alpha1", "kind": "TrainingRun", "name": "mnist", "uid": "uid-1",
                     "controller": True, "blockOwnerDeletion": True}
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in containers(pod):
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["imagePullPolicy"] == "Never"


def failed_pod(reason=None, exit_code=None, term_reason="Error", conditions=(), message=None):  # noqa: ANN001, ANN201
    status = {"phase": "Failed", "conditions": list(conditions)}
    if reason:
        status["reason"] = reason
        status["message"] = message or reason
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "reason": term_reason, "message": "Traceback\nValueError: bad lr"}}}]
    return {"status": status}


@pytest.mark.parametrize("pod, kind, words", [
    (failed_pod(exit_code=1), FailureKind.USER_ERROR, "exited with code 1: ValueError: bad lr"),
    (failed_pod(exit_code=137, term_reason="OOMKilled"), FailureKind.OOM, "out of memory"),
    (failed_pod(reason="Evicted", message="The node was low on resource: memory."), FailureKind.INFRASTRUCTURE,
     "Evicted"),
    (failed_pod(exit_code=137, conditions=[{"type": "DisruptionTarget", "status": "True",
                                             "reason": "PreemptionByScheduler", "message": "preempted"}]),
     FailureKind.INFRASTRUCTURE, "PreemptionByScheduler"),
    (failed_pod(reason="NodeLost"), FailureKind.INFRASTRUCTURE, "NodeLost"),
    (failed_pod(reason="DeadlineExceeded"), FailureKind.DEADLINE, "DeadlineExceeded"),
    (failed_pod(), FailureKind.INFRASTRUCTURE, "before the trainer ran"),
    (failed_pod(exit_code=137, term_reason="ContainerStatusUnknown"), FailureKind.INFRASTRUCTURE, "killed"),
])
def test_failures_are_classified(pod, kind, words):
    got, message = classify_pod_failure(pod)
    assert got == kind and words in message


def test_retry_delay_doubles_to_a_cap():
    assert [retry_delay(n) for n in range(6)] == [5, 5, 10, 20, 40, 80]
    assert retry_delay(30) == 300
