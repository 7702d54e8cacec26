"""The operator on the real local cluster: TrainingRuns become tracked GPU pods, retried and recorded."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

from cairn.podspec import pod_name
from cairn.store import TrackingStore
from tests.support.cluster import wait_until
from tests.support.cluster_operator import python_trainer, trainingrun, wait_phase

pytestmark = pytest.mark.cluster
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trainingrun.yaml"
# A trainer that stops on SIGTERM, as a well-behaved one does: as its container's PID 1 a bare
# `time.sleep` would ignore the signal and hold the pod for its whole grace period (drain + 30 s).
SLEEPER = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\ntime.sleep(600)\n"
POD_GONE_S = 120  # the pod's grace period (90 s by default) bounds it; a SIGTERM-stopped trainer takes seconds


def test_sample_trainingrun_is_trained_and_tracked(kubectl, namespace, running_operator, store_urls):
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["spec"]["params"].update(epochs=4, epoch_seconds=0)
    kubectl.apply(manifest, namespace=namespace)
    seen = set()

    def finished():  # noqa: ANN202
        tr = kubectl.get("trainingrun", "digits", namespace)
        phase = (tr.get("status") or {}).get("phase")
        seen.add(phase)
        return tr if phase in ("Succeeded", "Failed") else None

    tr = wait_until(finished, 240, "the digits TrainingRun to finish", interval=0.5)
    status = tr["status"]
    assert status["phase"] == "Succeeded", (status, running_operator.log())
    assert {"Pending", "Running"} <= seen
    assert status["exitCode"] == 0 and status["attempts"] == 1
    assert status["nodeName"] == "cairn-node" and status["gpuProduct"] == "NVIDIA-H100-80GB-HBM3"
    assert status["imageDigest"].startswith("sha256:")

    pod = kubectl.get("pod", status["podName"], namespace)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["cairn-sidecar"]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    states = {cs["name"]: cs["state"] for cs in pod["status"]["initContainerStatuses"] + pod["status"]["containerStatuses"]}
    assert states["trainer"]["terminated"]["exitCode"] == 0
    assert states["cairn-sidecar"]["terminated"]["exitCode"] == 0  # drained, then exited cleanly

    store = TrackingStore(store_urls[0])
    run = store.get_run(tr["metadata"]["uid"])
    assert run.summary.status == "FINISHED" and run.summary.exit_code == 0
    assert run.params["lr"] == 0.2 and run.params["epochs"] == 4
    assert run.cluster.node_name == "cairn-node" and run.cluster.gpu_product == "NVIDIA-H100-80GB-HBM3"
    assert run.cluster.image_digest == status["imageDigest"]
    assert run.environment.python_version.startswith("3.11")
    assert run.summary.metrics["val_acc"].count == 4 and run.summary.metrics["val_acc"].value > 0.8
    assert run.summary.metrics["loss"].count == 4 * (1347 // 64)
    assert [a.path for a in run.artifacts] == ["artifacts/model.npz"]

    def shown():  # noqa: ANN202
        out = kubectl.run("-n", namespace, "get", "trainingruns.cairn.dev", "digits", "--no-headers").stdout.split()
        return out if len(out) >= 6 and out[3] != "<none>" else None
    name, phase, gpus, step, metric, value = wait_until(shown, 30, "step and metric in kubectl get tr")[:6]
    assert (phase, gpus, metric) == ("Succeeded", "1", "val_acc")
    assert int(step) == run.summary.metrics["loss"].step and float(value) == pytest.approx(
        run.summary.metrics["val_acc"].value, rel=1e-4)


def conditions(tr: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (tr.get("status") or {}).get("conditions") or []}


def events(kubectl, namespace: str, name: str) -> list[str]:
    out = kubectl.run("-n", namespace, "get", "events", "--field-selector",
                      f"involvedObject.kind=TrainingRun,involvedObject.name={name}",
                      "-o", "jsonpath={range .items[*]}{.reason}{'\\n'}{end}").stdout
    return out.split()


def test_failing_trainer_is_retried_up_to_backoff_limit_then_failed(kubectl, namespace, running_operator, store_urls):
    kubectl.apply(trainingrun("flaky", python_trainer("import sys; print('boom'); sys.exit(3)"), backoffLimit=1),
                  namespace=namespace)
    tr = wait_phase(kubectl, namespace, "flaky", ("Failed",), timeout=180)
    status = tr["status"]
    assert status["attempts"] == 2 and status["failures"] == 2, status
    assert status["reason"] == "UserError" and "exited with code 3" in status["message"]
    assert "backoffLimit 1" in status["message"] and status["exitCode"] == 3
    assert conditions(tr)["Failed"]["status"] == "True"
    pods = kubectl.run("-n", namespace, "get", "pods", "-l", "cairn.dev/trainingrun=flaky", "-o", "name").stdout.split()
    uid = tr["metadata"]["uid"]
    assert sorted(pods) == sorted(f"pod/{pod_name('flaky', uid, attempt)}" for attempt in (1, 2))
    assert {"PodCreated", "UserError"} <= set(events(kubectl, namespace, "flaky"))
    run = TrackingStore(store_urls[0]).get_run(tr["metadata"]["uid"])
    assert run.summary.status == "FAILED" and run.summary.exit_code == 3
    assert run.cluster.attempts == 2 and run.cluster.reason is not None and "UserError" in run.cluster.reason


def test_out_of_memory_is_reported_as_such(kubectl, namespace, running_operator):
    hog = "x = bytearray(512 * 1024 * 1024); print(len(x))"
    kubectl.apply(trainingrun("hog", python_trainer(hog), backoffLimit=0, resources={"memory": "64Mi"}),
                  namespace=namespace)
    tr = wait_phase(kubectl, namespace, "hog", ("Failed",), timeout=180)
    assert tr["status"]["reason"] == "OOMKilled", tr["status"]
    assert "out of memory" in tr["status"]["message"]


def test_a_typo_in_command_fails_at_once_with_backoff_limit_zero(kubectl, namespace, running_operator):
    kubectl.apply(trainingrun("typo", ["pyhton3", "-c", "print(1)"], backoffLimit=0), namespace=namespace)
    tr = wait_phase(kubectl, namespace, "typo", ("Failed",), timeout=120)
    status = tr["status"]
    assert (status["reason"], status["attempts"], status["failures"]) == ("StartError", 1, 1), status
    assert "spec.command" in status["message"] and "pyhton3" in status["message"]
    assert conditions(tr)["Stalled"]["status"] == "True" and conditions(tr)["Ready"]["status"] == "False"


def test_an_image_the_node_cannot_get_is_shown_then_fails_at_the_pending_deadline(kubectl, namespace,
                                                                                   running_operator):
    # The operator's pods use imagePullPolicy Never: a missing image is ErrImageNeverPull at once.
    kubectl.apply(trainingrun("noimage", python_trainer("print(1)"), image="cairn.invalid/nope:1",
                              pendingDeadlineSeconds=30), namespace=namespace)

    def stalled():  # noqa: ANN202
        tr = kubectl.get("trainingrun", "noimage", namespace)
        cond = conditions(tr).get("Stalled")
        return tr if cond and cond["status"] == "True" else None
    tr = wait_until(stalled, 60, "the Stalled=True condition", interval=1)
    status = tr["status"]
    assert (status["phase"], status["reason"]) == ("Pending", "ErrImageNeverPull"), status
    assert "check spec.image (cairn.invalid/nope:1)" in status["message"]
    assert events(kubectl, namespace, "noimage").count("ErrImageNeverPull") == 1
    failed = wait_phase(kubectl, namespace, "noimage", ("Failed",), timeout=90)
    assert failed["status"]["message"].endswith("(stuck for 30s, spec.pendingDeadlineSeconds)")
    assert failed["status"]["runId"] == failed["metadata"]["uid"]


def test_too_many_gpus_stay_pending_with_the_schedulers_reason(kubectl, namespace, running_operator):
    kubectl.apply(trainingrun("greedy", python_trainer("print(1)"), resources={"gpus": 64}), namespace=namespace)

    def unschedulable():  # noqa: ANN202
        tr = kubectl.get("trainingrun", "greedy", namespace)
        cond = conditions(tr).get("Scheduled")
        return tr if cond and cond["status"] == "False" else None
    tr = wait_until(unschedulable, 90, "the Scheduled=False condition", interval=1)
    cond = conditions(tr)["Scheduled"]
    assert tr["status"]["phase"] == "Pending" and cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert cond["lastTransitionTime"] and cond["observedGeneration"] == tr["metadata"]["generation"]


def test_deleting_a_running_trainingrun_stops_its_pod_and_marks_the_run_killed(
        kubectl, namespace, running_operator, store_urls):
    kubectl.apply(trainingrun("long", python_trainer(SLEEPER)), namespace=namespace)
    tr = wait_phase(kubectl, namespace, "long", ("Running",), timeout=120)
    kubectl.run("-n", namespace, "delete", "trainingrun", "long", "--timeout=90s")
    pod = pod_name("long", tr["metadata"]["uid"], 1)
    wait_until(lambda: kubectl.run("-n", namespace, "get", "pod", pod, check=False).returncode != 0,
               POD_GONE_S, "the pod to be deleted")
    run = TrackingStore(store_urls[0]).get_run(tr["metadata"]["uid"])
    assert run.summary.status == "KILLED"


def test_operator_restarted_ten_times_mid_run_creates_no_duplicate_pod(
        kubectl, namespace, running_operator, store_urls):
    trainer = "import time, cairn\ncairn.init()\nfor s in range(40):\n    cairn.log({'loss': 1/(s+1)}, step=s); time.sleep(0.5)\n"
    kubectl.apply(trainingrun("steady", python_trainer(trainer)), namespace=namespace)
    wait_phase(kubectl, namespace, "steady", ("Pending", "Running"), timeout=60)
    for _ in range(10):
        running_operator.kill()
        running_operator.start()
    tr = wait_phase(kubectl, namespace, "steady", ("Succeeded",), timeout=180)
    pods = kubectl.run("-n", namespace, "get", "pods", "-l", "cairn.dev/trainingrun=steady", "-o", "name").stdout.split()
    assert pods == [f"pod/{pod_name('steady', tr['metadata']['uid'], 1)}"] and tr["status"]["attempts"] == 1
    run = TrackingStore(store_urls[0]).get_run(tr["metadata"]["uid"])
    assert run.summary.status == "FINISHED" and run.summary.metrics["loss"].count == 40


def test_suspend_stops_the_pod_and_resume_starts_a_new_attempt(kubectl, namespace, running_operator):
    kubectl.apply(trainingrun("pausable", python_trainer(SLEEPER)), namespace=namespace)
    first = pod_name("pausable", wait_phase(kubectl, namespace, "pausable", ("Running",), timeout=120)["metadata"]["uid"], 1)
    kubectl.run("-n", namespace, "patch", "trainingruns.cairn.dev", "pausable", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    tr = wait_phase(kubectl, namespace, "pausable", ("Suspended",), timeout=60)
    assert conditions(tr)["Suspended"]["status"] == "True"
    wait_until(lambda: kubectl.run("-n", namespace, "get", "pod", first, check=False).returncode != 0,
               POD_GONE_S, "the suspended pod to be deleted")
    kubectl.run("-n", namespace, "patch", "trainingruns.cairn.dev", "pausable", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    tr = wait_phase(kubectl, namespace, "pausable", ("Running",), timeout=120)
    assert tr["status"]["attempts"] == 2 and tr["status"].get("failures") is None
    assert conditions(tr)["Suspended"]["status"] == "False"


def test_active_deadline_fails_the_run_and_ttl_deletes_it(kubectl, namespace, running_operator, store_urls):
    kubectl.apply(trainingrun("bounded", python_trainer("import time; time.sleep(600)"),
                              activeDeadlineSeconds=5, ttlSecondsAfterFinished=3), namespace=namespace)
    tr = wait_phase(kubectl, namespace, "bounded", ("Failed",), timeout=120)
    assert tr["status"]["reason"] == "DeadlineExceeded"
    wait_until(lambda: kubectl.run("-n", namespace, "get", "trainingruns.cairn.dev", "bounded", "-o", "name",
                                   "--ignore-not-found").stdout.strip() == "",
               90, "the TrainingRun to be deleted after its TTL")
    run = TrackingStore(store_urls[0]).get_run(tr["metadata"]["uid"])
    assert run.summary.status == "FAILED"  # the record outlives the object


def test_operator_metrics(kubectl, namespace, running_operator):
    # Long enough to be seen Running, so the apply-to-running histogram has its one observation.
    trainer = python_trainer("import time; time.sleep(4); print('hi')")
    kubectl.apply(trainingrun("counted", trainer, resources={"gpus": 2}), namespace=namespace)
    wait_phase(kubectl, namespace, "counted", ("Succeeded",), timeout=120)
    text = running_operator.metrics()
    assert 'cairn_trainingruns{phase="Succeeded"} 1.0' in text
    reconciles = [line for line in text.splitlines() if line.startswith("cairn_reconcile_duration_seconds_count")]
    assert reconciles and float(reconciles[0].split()[-1]) >= 2
    assert "cairn_apply_to_running_seconds_count 1.0" in text
    gpu = [line for line in text.splitlines() if line.startswith("cairn_gpu_seconds_total")]
    assert gpu and float(gpu[0].split()[-1]) > 0


def test_status_follows_pod_phase_changes_within_seconds(kubectl, namespace, running_operator):
    """No polling behind it: the TrainingRun's phase follows its pod's within 3 s, both ways."""
    kubectl.apply(trainingrun("quick", python_trainer("import time; time.sleep(4)")), namespace=namespace)
    pod = pod_name("quick", kubectl.get("trainingrun", "quick", namespace)["metadata"]["uid"], 1)
    first_seen: dict[tuple[str, str], float] = {}

    def finished():  # noqa: ANN202
        out = kubectl.run("-n", namespace, "get", f"pod/{pod}", "trainingruns.cairn.dev/quick", "-o",
                          "jsonpath={range .items[*]}{.kind}={.status.phase} {end}", check=False).stdout.split()
        now = time.monotonic()
        for kind, _, phase in (item.partition("=") for item in out):
            first_seen.setdefault((kind, phase), now)
        return ("TrainingRun", "Succeeded") in first_seen
    wait_until(finished, 120, "the quick TrainingRun to succeed", interval=0.2)
    for phase in ("Running", "Succeeded"):
        lag = first_seen[("TrainingRun", phase)] - first_seen[("Pod", phase)]
        assert lag <= 3, (phase, lag, first_seen)
