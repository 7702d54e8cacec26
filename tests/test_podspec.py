"""Pod building and pod reading: pure functions, checked case by case."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import pytest
from cairn.api import from_manifest
from cairn.controller.failures import FailureKind, classify_pod_failure, phase_from_pod, retry_delay
from cairn.agent.sidecar import SidecarSettings
from cairn.podspec import PodSettings, build_pod, owned_by, pod_name, trainer_env
from cairn.rundir import Env

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def tr(**spec):  # noqa: ANN003, ANN201
    return from_manifest({"metadata": {"name": "mnist", "namespace": "ml", "uid": "uid-1"},
                          "spec": {"image": "trainer:1", "command": ["python3", "train.py"], **spec}})


def containers(pod):  # noqa: ANN001, ANN201
    (sidecar,) = pod["spec"]["initContainers"]
    (trainer,) = pod["spec"]["containers"]
    return sidecar, trainer


def env_of(container) -> dict:  # noqa: ANN001
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


UID_A, UID_B = "3f2b9c7e-0d4a-4b8e-9c1f-5a6d7e8f9a0b", "3f2b9c7e-0d4a-4b8e-9c1f-5a6d7e8f9a0c"


def test_pod_names_are_deterministic_and_fit():
    assert pod_name("mnist", UID_A, 1) == pod_name("mnist", UID_A, 1) != pod_name("mnist", UID_A, 2)
    assert re.fullmatch(r"mnist-[0-9a-f]{5}-1", pod_name("mnist", UID_A, 1))
    long = "x" * 70
    assert len(pod_name(long, UID_A, 12)) <= 63 and pod_name(long, UID_A, 12).endswith("-12")
    assert pod_name(long, UID_A, 1) != pod_name("x" * 69 + "y", UID_A, 1)


@pytest.mark.parametrize("name", ["mnist", "x" * 50, "x" * 70])
def test_a_trainingrun_created_again_under_its_name_gets_other_pod_names(name):
    assert pod_name(name, UID_A, 1) != pod_name(name, UID_B, 1)


def test_the_longest_trainingrun_name_keeps_its_name_in_its_pod_names():
    name = "x" * 50  # the CRD's limit
    assert pod_name(name, UID_A, 999999).startswith(f"{name}-")
    assert len(pod_name(name, UID_A, 999999)) == 63


@pytest.mark.parametrize("length", [1, 50, 60, 61, 62, 63, 64, 100, 253])
@pytest.mark.parametrize("attempt", [1, 9, 10, 100, 12345])
def test_pod_names_are_valid_dns_labels(length, attempt):
    for base in ("a" * length, ("ab-" * 100)[:length].rstrip("-") or "a", ("a." * 130)[:length].strip(".")):
        name = pod_name(base, UID_A, attempt)
        assert len(name) <= 63 and DNS_LABEL.match(name.replace(".", "x")), name
        assert name.endswith(f"-{attempt}")


def test_a_pod_is_owned_by_the_uid_of_its_owner_reference_not_by_its_name():
    pod = build_pod(tr(), PodSettings(), 1, "uid-1")
    assert owned_by(pod, "uid-1")
    assert not owned_by(pod, "uid-2")
    assert not owned_by({"metadata": {"name": pod["metadata"]["name"]}}, "uid-1")


def test_the_grace_period_outlasts_the_sidecars_drain():
    settings = PodSettings()
    pod = build_pod(tr(), settings, 1, "uid-1")
    sidecar, _ = containers(pod)
    drain_s = float(env_of(sidecar)[Env.DRAIN_TIMEOUT])
    assert drain_s == SidecarSettings.model_fields["drain_timeout"].default
    assert pod["spec"]["terminationGracePeriodSeconds"] >= drain_s + 30


def test_same_inputs_build_the_same_pod():
    assert build_pod(tr(), PodSettings(), 1, "r") == build_pod(tr(), PodSettings(), 1, "r")


def test_sidecar_is_a_native_sidecar_with_the_only_database_credentials():
    sidecar, trainer = containers(build_pod(tr(), PodSettings(database_secret="db"), 1, "run-1"))
    assert sidecar["restartPolicy"] == "Always" and sidecar["command"] == ["cairn", "sidecar"]
    assert env_of(sidecar)["CAIRN_DATABASE_URL"] == {"secretKeyRef": {"name": "db", "key": "url"}}
    assert "CAIRN_DATABASE_URL" not in env_of(trainer)
    assert not any("secret" in str(e).lower() for e in trainer["env"])
    assert sidecar["startupProbe"]["exec"]["command"][-1] == "/cairn/run/.sidecar-ready"
    assert trainer["volumeMounts"] == [{"name": "run", "mountPath": "/cairn/run"}]
    assert sidecar["volumeMounts"] == [{"name": "run", "mountPath": "/cairn/run"},
                                       {"name": "cairn-tmp", "mountPath": "/tmp"}]


def probe_command(ready_file: str, polls: str | None = None) -> list[str]:
    """The sidecar's startup probe command, pointed at ``ready_file`` (and ``polls`` waits, when given)."""
    sidecar, _ = containers(build_pod(tr(), PodSettings(), 1, "run-1"))
    command = list(sidecar["startupProbe"]["exec"]["command"])
    command[-1] = ready_file
    if polls is not None:
        command[-2] = polls
    return command


def test_sidecar_startup_probe_passes_at_once_when_the_sidecar_gets_ready(tmp_path):
    """A normal start passes the first probe (no `Startup probe failed` event), soon after the file appears."""
    sidecar, _ = containers(build_pod(tr(), PodSettings(), 1, "run-1"))
    probe = sidecar["startupProbe"]
    assert probe["exec"]["command"][-1] == "/cairn/run/.sidecar-ready"
    ready = tmp_path / ".sidecar-ready"
    writer = threading.Timer(1.0, ready.write_text, args=("1",))
    t0 = time.monotonic()
    writer.start()
    result = subprocess.run(probe_command(str(ready)), capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - t0
    writer.join()
    assert result.returncode == 0, result.stderr
    assert 1.0 <= elapsed < 2.0, elapsed
    # the kubelet must let the probe's own wait finish: it kills an exec probe at timeoutSeconds
    assert probe["timeoutSeconds"] > int(probe["exec"]["command"][-2]) * 0.1


def test_sidecar_startup_probe_gives_up_after_its_bounded_wait(tmp_path):
    t0 = time.monotonic()
    result = subprocess.run(probe_command(str(tmp_path / "never"), polls="3"), capture_output=True, timeout=30)
    assert result.returncode == 1
    assert time.monotonic() - t0 < 2.0


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


def test_a_staged_dataset_is_named_to_the_prepare_step_and_the_trainer_inside_the_run_volume():
    pod = build_pod(tr(dataset={"uri": "s3://data/x", "stage": True}), PodSettings(), 1, "r")
    prepare = pod["spec"]["initContainers"][0]
    trainer = pod["spec"]["containers"][0]
    assert prepare["name"] == "cairn-prepare"
    assert env_of(prepare)["CAIRN_DATASET_DIR"] == env_of(trainer)["CAIRN_DATASET_DIR"] == "/cairn/run/dataset"
    assert any(m["mountPath"] == "/cairn/run" for m in prepare["volumeMounts"])
    unstaged = build_pod(tr(dataset={"uri": "s3://data/x"}), PodSettings(), 1, "r")
    assert not any("CAIRN_DATASET_DIR" in env_of(c)
                   for c in unstaged["spec"]["initContainers"] + unstaged["spec"]["containers"])


def test_gpus_become_limits_node_selection_and_a_toleration():
    pod = build_pod(tr(resources={"gpus": 2, "gpuType": "NVIDIA-A100", "cpu": "4", "memory": "16Gi"},
                       nodeSelector={"zone": "a"}), PodSettings(), 1, "r")
    _, trainer = containers(pod)
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "2", "cpu": "4", "memory": "16Gi"}
    assert trainer["resources"]["requests"] == trainer["resources"]["limits"]
    assert pod["spec"]["nodeSelector"] == {"zone": "a", "nvidia.com/gpu.product": "NVIDIA-A100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]


def test_params_reach_trainer_and_sidecar_as_the_same_json():
    sidecar, trainer = containers(build_pod(tr(params={"b": True, "a": 1}), PodSettings(), 1, "r"))
    assert env_of(sidecar)["CAIRN_PARAMS"] == env_of(trainer)["CAIRN_PARAMS"] == '{"a": 1, "b": true}'
    assert json.loads(env_of(trainer)["CAIRN_PARAMS"]) == {"a": 1, "b": True}
    assert env_of(trainer)["CAIRN_PARAMS_FILE"] == "/cairn/run/params.json"  # written by the sidecar
    assert env_of(sidecar)["CAIRN_RUN_DIR"] == env_of(trainer)["CAIRN_RUN_DIR"] == "/cairn/run"
    assert env_of(sidecar)["CAIRN_RUN_ID"] == env_of(trainer)["CAIRN_RUN_ID"] == "r"


def test_user_env_keeps_value_from_and_comes_first():
    t = tr(env=[{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, {"name": "B", "value": ""}])
    env = trainer_env(t, 1, "r")
    assert env[:2] == [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                       {"name": "B", "value": ""}]


def test_optional_env_only_when_the_spec_has_it():
    names = {e["name"] for e in trainer_env(tr(), 1, "r")}
    assert names == {"CAIRN_RUN_ID", "CAIRN_RUN_DIR", "CAIRN_RUN_NAME", "CAIRN_EXPERIMENT", "CAIRN_ATTEMPT",
                     "CAIRN_PARAMS", "CAIRN_PARAMS_FILE"}
    names = {e["name"] for e in trainer_env(tr(code={"commit": "abcdef1"}), 1, "r")}
    assert "CAIRN_CODE_COMMIT" in names and "CAIRN_CODE_REPOSITORY" not in names


def test_the_trainer_runs_the_spec_command_and_args():
    _, trainer = containers(build_pod(tr(args=["--lr", "0.1"]), PodSettings(), 1, "r"))
    assert trainer["name"] == "trainer" and trainer["image"] == "trainer:1"
    assert trainer["command"] == ["python3", "train.py"] and trainer["args"] == ["--lr", "0.1"]
    assert "imagePullPolicy" not in trainer  # the Kubernetes default for the tag


def test_sidecar_settings_shape_the_sidecar():
    settings = PodSettings(sidecar_image="reg/cairn:1", database_secret="db", database_secret_key="dsn",
                           sidecar_memory="512Mi", drain_timeout_s=10)
    pod = build_pod(tr(), settings, 1, "r")
    sidecar, _ = containers(pod)
    assert sidecar["image"] == "reg/cairn:1" and sidecar["name"] == "cairn-sidecar"
    assert env_of(sidecar)["CAIRN_DATABASE_URL"] == {"secretKeyRef": {"name": "db", "key": "dsn"}}
    assert env_of(sidecar)["CAIRN_DRAIN_TIMEOUT"] == "10"
    assert sidecar["resources"]["limits"] == {"memory": "512Mi"}
    assert pod["spec"]["terminationGracePeriodSeconds"] > 10  # room for the sidecar to drain
    assert pod["spec"]["volumes"] == [{"name": "run", "emptyDir": {"sizeLimit": "50Gi"}},
                                      {"name": "cairn-tmp", "emptyDir": {}}]


def test_run_volume_size_limit_bounds_the_emptydir():
    pod = build_pod(tr(runVolumeSizeLimit="200Gi"), PodSettings(), 1, "r")
    assert pod["spec"]["volumes"][0] == {"name": "run", "emptyDir": {"sizeLimit": "200Gi"}}


def test_cpu_and_memory_without_gpus():
    pod = build_pod(tr(resources={"cpu": "500m", "memory": "1Gi"}), PodSettings(), 1, "r")
    _, trainer = containers(pod)
    assert trainer["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                    "limits": {"cpu": "500m", "memory": "1Gi"}}
    assert "tolerations" not in pod["spec"]


def test_a_gpu_toleration_of_the_users_replaces_the_default():
    mine = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    pod = build_pod(tr(resources={"gpus": 1}, tolerations=[mine]), PodSettings(), 1, "r")
    assert pod["spec"]["tolerations"] == [mine]
    pod = build_pod(tr(resources={"gpus": 1}, tolerations=[{"key": "spot", "operator": "Exists"}]), PodSettings(), 1, "r")
    assert pod["spec"]["tolerations"] == [{"key": "spot", "operator": "Exists"},
                                          {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_toleration_seconds_pass_through():
    t = {"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30}
    assert build_pod(tr(tolerations=[t]), PodSettings(), 1, "r")["spec"]["tolerations"] == [t]


def test_active_deadline_defaults_to_the_runs_and_can_be_tightened():
    assert "activeDeadlineSeconds" not in build_pod(tr(), PodSettings(), 1, "r")["spec"]
    bounded = tr(activeDeadlineSeconds=600)
    assert build_pod(bounded, PodSettings(), 1, "r")["spec"]["activeDeadlineSeconds"] == 600
    assert build_pod(bounded, PodSettings(), 2, "r", active_deadline_seconds=120)["spec"]["activeDeadlineSeconds"] == 120
    with pytest.raises(ValueError, match="deadline has passed"):
        build_pod(bounded, PodSettings(), 2, "r", active_deadline_seconds=0)


def test_attempts_count_from_one():
    with pytest.raises(ValueError):
        build_pod(tr(), PodSettings(), 0, "r")


def test_labels_are_valid_label_values_and_the_experiment_is_annotated():
    run_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    pod = build_pod(tr(experiment="digits"), PodSettings(), 7, run_id)
    assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in pod["metadata"]["labels"].values())
    assert pod["metadata"]["labels"]["cairn.dev/run-id"] == run_id
    assert pod["metadata"]["annotations"]["cairn.dev/experiment"] == "digits"


def test_sidecar_serves_live_metrics_where_prometheus_looks():
    pod = build_pod(tr(tracking={"headlineMetric": "val_acc", "exportKeys": ["loss", "val_acc"]}), PodSettings(), 1, "r")
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    sidecar = pod["spec"]["initContainers"][0]
    (port,) = sidecar["ports"]
    assert port["name"] == "metrics" and str(port["containerPort"]) == annotations["prometheus.io/port"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["CAIRN_METRICS_PORT"] == annotations["prometheus.io/port"]
    assert env["CAIRN_EXPORT_KEYS"] == "loss,val_acc" and env["CAIRN_HEADLINE_METRIC"] == "val_acc"
    assert env["CAIRN_NAMESPACE"] == "ml" and env["CAIRN_RUN_NAME"] == "mnist"


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
    assert meta["name"] == pod_name("mnist", "uid-1", 3) and meta["namespace"] == "ml"
    assert meta["labels"] == {"cairn.dev/trainingrun": "mnist", "cairn.dev/run-id": "run-1", "cairn.dev/attempt": "3"}
    (owner,) = meta["ownerReferences"]
    assert owner == {"apiVersion": "cairn.dev/v1alpha1", "kind": "TrainingRun", "name": "mnist", "uid": "uid-1",
                     "controller": True, "blockOwnerDeletion": True}
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]:  # the prepare step too (a retry)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["imagePullPolicy"] == "Never"


def test_cairns_containers_have_a_read_only_root_and_the_pod_no_service_links():
    pod = build_pod(tr(), PodSettings(), 2, "run-1")  # a retry: the prepare step runs too
    prepare, sidecar = pod["spec"]["initContainers"]
    (trainer,) = pod["spec"]["containers"]
    assert pod["spec"]["enableServiceLinks"] is False
    for c in (prepare, sidecar):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        # what they write goes to the run directory or to /tmp, an emptyDir of the pod, also their HOME
        assert {"name": "cairn-tmp", "mountPath": "/tmp"} in c["volumeMounts"] and env_of(c)["HOME"] == "/tmp"
    assert {"name": "cairn-tmp", "emptyDir": {}} in pod["spec"]["volumes"]
    assert "readOnlyRootFilesystem" not in trainer["securityContext"]  # the user's image may write where it likes


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
    (failed_pod(reason="NodeShutdown", message="Pod was terminated in response to imminent node shutdown."),
     FailureKind.INFRASTRUCTURE, "NodeShutdown: Pod was terminated"),
    (failed_pod(reason="Terminated"), FailureKind.INFRASTRUCTURE, "Terminated"),
    (failed_pod(reason="UnexpectedAdmissionError"), FailureKind.INFRASTRUCTURE, "UnexpectedAdmissionError"),
    (failed_pod(reason="OutOfnvidia.com/gpu"), FailureKind.INFRASTRUCTURE, "OutOfnvidia.com/gpu"),
    (failed_pod(reason="DeadlineExceeded", exit_code=137, term_reason="Error"), FailureKind.DEADLINE, "Deadline"),
    (failed_pod(exit_code=2, conditions=[{"type": "DisruptionTarget", "status": "False"}]), FailureKind.USER_ERROR,
     "code 2"),
    (failed_pod(exit_code=137, term_reason="Error"), FailureKind.USER_ERROR, "code 137"),
    (failed_pod(exit_code=143, term_reason="Error"), FailureKind.USER_ERROR, "code 143"),
    (failed_pod(exit_code=1, term_reason="OOMKilled"), FailureKind.OOM, "exit code 1"),
    (failed_pod(exit_code=128, term_reason="StartError"), FailureKind.START_ERROR, "(StartError, exit code 128"),
    (failed_pod(exit_code=127, term_reason="ContainerCannotRun"), FailureKind.START_ERROR, "spec.command"),
    (failed_pod(reason="Evicted", message='Usage of EmptyDir volume "run" exceeds the limit "50Gi". '),
     FailureKind.RUN_VOLUME_FULL, 'exceeds the limit "50Gi". (spec.runVolumeSizeLimit)'),
    (failed_pod(reason="Evicted", message='Usage of EmptyDir volume "cache" exceeds the limit "1Gi". '),
     FailureKind.INFRASTRUCTURE, "Evicted"),
])
def test_failures_are_classified(pod, kind, words):
    got, message = classify_pod_failure(pod)
    assert got == kind and words in message


def test_a_failed_sidecar_is_not_mistaken_for_the_trainer():
    pod = {"status": {"phase": "Failed", "containerStatuses": [], "initContainerStatuses": [
        {"name": "cairn-sidecar", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}}
    assert classify_pod_failure(pod)[0] == FailureKind.INFRASTRUCTURE


def test_only_the_last_line_of_a_long_message_is_kept():
    pod = failed_pod(exit_code=1)
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = "x\n" + "y" * 1000
    _, message = classify_pod_failure(pod)
    assert message == "the trainer exited with code 1: " + "y" * 200


def test_failure_kinds_name_the_reasons_in_status():
    assert {k.reason for k in FailureKind} == {"UserError", "StartError", "OOMKilled", "RunVolumeFull",
                                               "Infrastructure", "DeadlineExceeded", "DatasetMismatch",
                                               "DatasetUnavailable"}


@pytest.mark.parametrize("status, phase", [
    ({}, "Pending"),
    ({"phase": "Pending"}, "Pending"),
    ({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]},
     "Pending"),
    ({"phase": "Running"}, "Running"),
    ({"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 0}}}]},
     "Running"),
    ({"phase": "Unknown"}, "Running"),
    ({"phase": "Succeeded"}, "Succeeded"),
    ({"phase": "Failed", "reason": "Evicted"}, "Failed"),
])
def test_phase_from_pod(status, phase):
    assert phase_from_pod({"status": status}) == phase


def test_phase_from_a_pod_without_status():
    assert phase_from_pod({"metadata": {"name": "x"}}) == "Pending"


def test_retry_delay_doubles_to_a_cap():
    assert [retry_delay(n) for n in range(6)] == [5, 5, 10, 20, 40, 80]
    assert retry_delay(30) == 300 and retry_delay(10_000) == 300
    assert retry_delay(-1) == 5
    assert [retry_delay(n, base=1, cap=3) for n in range(5)] == [1, 1, 2, 3, 3]
