"""The TrainingRun resource (cairn.dev/v1alpha1): spec and status, with their documentation.

These classes are the source of the CRD in ``crds/`` (``python -m cairn.api.crd crds/``): every field's
description, default, bounds and cross-field rule is written here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn.api.schema import Scalar, field

GROUP = "cairn.dev"
VERSION = "v1alpha1"
KIND = "TrainingRun"
PLURAL = "trainingruns"
SINGULAR = "trainingrun"
SHORT_NAMES = ["tr"]
CATEGORIES = ["cairn"]

MAX_NAME_LENGTH = 50  # leaves room for "-<uid hash>-<attempt>" in the pod name and fits label values
# Kubernetes resource.Quantity syntax, without negative values.
QUANTITY = (r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
            r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
PARAM_KEY = r"^[A-Za-z_][A-Za-z0-9_.\-/]{0,249}$"
SHA256 = r"^[0-9a-f]{64}$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"  # as the store's registry checks it
PHASES = ["Pending", "Running", "Succeeded", "Failed", "Suspended"]
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# The TrainingRun's spec (JSON, cairn.api.recorded_spec) among its run's tags in the store, so that
# `cairn runs reproduce` can write it again.
SPEC_TAG = "kubernetes.spec"


@dataclass(kw_only=True)
class EnvVar:
    """An environment variable of the training container."""

    __validations__ = [
        {"rule": "!(has(self.value) && has(self.valueFrom))", "message": "set either value or valueFrom, not both",
         "fieldPath": ".valueFrom", "reason": "FieldValueForbidden"},
    ]

    name: str = field("Name of the variable.", required=True, pattern=ENV_NAME, maxLength=256)
    value: str | None = field("Value of the variable.")
    value_from: dict | None = field(
        "Source of the value (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef), as in a Pod's env.")


@dataclass(kw_only=True)
class Toleration:
    """A toleration of node taints, as in a Pod."""

    # The Pod API enforces these too, but only when the pod is created, long after kubectl apply.
    __validations__ = [
        {"rule": "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
         "message": "operator must be Exists when key is empty", "fieldPath": ".operator",
         "reason": "FieldValueInvalid"},
        {"rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
         "message": "value must be empty when operator is Exists", "fieldPath": ".value",
         "reason": "FieldValueInvalid"},
        {"rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
         "message": "tolerationSeconds needs effect NoExecute", "fieldPath": ".tolerationSeconds",
         "reason": "FieldValueInvalid"},
    ]

    key: str | None = field("Taint key the toleration applies to; empty with operator Exists matches all keys.",
                            maxLength=316)
    operator: str | None = field("How the key relates to the value.", enum=["Exists", "Equal"])
    value: str | None = field("Taint value the toleration matches (operator Equal).", maxLength=63)
    effect: str | None = field("Taint effect to match; empty matches all effects.",
                               enum=["NoSchedule", "PreferNoSchedule", "NoExecute"])
    toleration_seconds: int | None = field("How long a NoExecute taint is tolerated before eviction.", minimum=0)


@dataclass(kw_only=True)
class Resources:
    """Compute resources of the training container."""

    __validations__ = [
        {"rule": "!has(self.gpuType) || self.gpus > 0", "message": "gpuType needs gpus greater than 0",
         "fieldPath": ".gpuType", "reason": "FieldValueInvalid"},
    ]

    gpus: int = field("Number of NVIDIA GPUs (the nvidia.com/gpu extended resource).", 0, minimum=0, maximum=64)
    gpu_type: str | None = field(
        "GPU model to run on, matched against the node label nvidia.com/gpu.product "
        "(for example NVIDIA-H100-80GB-HBM3).", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", maxLength=63)
    cpu: str | None = field("CPU request and limit, as a Kubernetes quantity (for example 4 or 500m).",
                            pattern=QUANTITY, maxLength=32)
    memory: str | None = field("Memory request and limit, as a Kubernetes quantity (for example 16Gi).",
                               pattern=QUANTITY, maxLength=32)


@dataclass(kw_only=True)
class Code:
    """The code version the run trains, recorded with the run."""

    repository: str | None = field("Repository URL or name.", maxLength=2048)
    commit: str = field("Commit (git hash) of the code.", required=True, pattern=r"^[0-9a-fA-F]{7,64}$")


@dataclass(kw_only=True)
class Dataset:
    """The dataset the run reads: an S3 prefix in the cluster's object store."""

    uri: str = field("S3 prefix of the dataset, s3://bucket/prefix.", required=True,
                     pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", maxLength=2048)
    sha256: str | None = field(
        "Expected content digest (64 hex digits); the run fails before training when the data differs.",
        pattern=SHA256)
    stage: bool = field(
        "Copy the dataset into the pod before training, at $CAIRN_DATASET_DIR; the digest is then computed "
        "from the copied bytes, so the trainer reads exactly the data that was checked. The copy lives in "
        "the pod's run volume (node disk, within runVolumeSizeLimit).", False)


@dataclass(kw_only=True)
class Tracking:
    """What is shown and exported live while the run trains."""

    headline_metric: str | None = field("Metric shown in kubectl get and status.metric (for example val_acc).",
                                        pattern=PARAM_KEY)
    export_keys: list[str] = field("Metric keys exported to Prometheus while the run is live (at most 20).",
                                   default_factory=list, maxItems=20, items={"pattern": PARAM_KEY},
                                   **{"x-kubernetes-list-type": "set"})


@dataclass(kw_only=True)
class RegisterModel:
    """Register the run's output as a new version of a model once the run has succeeded."""

    name: str = field("Model to add the version to (created when it does not exist yet).", required=True,
                      pattern=MODEL_NAME, maxLength=253)
    artifact_path: str = field("Artifact path of the model files, under the run's artifacts.", "artifacts/model/",
                               minLength=1, maxLength=1024)


@dataclass(kw_only=True)
class TrainingRunSpec:
    """What to train, on what, and how to track it."""

    # experiment, code and dataset are recorded with the run when it is created; later attempts
    # must not train something other than what the record says (params: see crd.params_policy).
    __validations__ = [
        {"rule": "self.experiment == oldSelf.experiment", "message": "experiment cannot change after creation",
         "fieldPath": ".experiment", "reason": "FieldValueForbidden"},
        {"rule": "has(self.code) == has(oldSelf.code) && (!has(self.code) || self.code == oldSelf.code)",
         "message": "code cannot change after creation", "fieldPath": ".code", "reason": "FieldValueForbidden"},
        {"rule": "has(self.dataset) == has(oldSelf.dataset) && (!has(self.dataset) || self.dataset == oldSelf.dataset)",
         "message": "dataset cannot change after creation", "fieldPath": ".dataset",
         "reason": "FieldValueForbidden"},
        {"rule": f"!has(self.resources.gpuType) || !has(self.nodeSelector) || !('{GPU_PRODUCT_LABEL}' in self.nodeSelector)"
                 f" || self.nodeSelector['{GPU_PRODUCT_LABEL}'] == self.resources.gpuType",
         "message": f"nodeSelector[{GPU_PRODUCT_LABEL}] contradicts resources.gpuType", "fieldPath": ".nodeSelector",
         "reason": "FieldValueInvalid"},
    ]

    image: str = field("Container image of the trainer.", required=True, minLength=1, maxLength=1024,
                       pattern=r"^[^\s]+$")
    command: list[str] = field("Command of the trainer (the image's entrypoint is replaced).", required=True,
                               default_factory=list, minItems=1, maxItems=64, items={"minLength": 1})
    experiment: str = field("Experiment the run belongs to; runs are compared within an experiment.", "default",
                            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", maxLength=128)
    args: list[str] = field("Arguments appended to the command.", default_factory=list, maxItems=256)
    env: list[EnvVar] = field("Environment variables of the trainer.", default_factory=list, maxItems=128,
                              **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    params: dict[str, Scalar] = field(
        "Hyperparameters (name to string, number or boolean). The trainer reads them as cairn.config; "
        "they override the defaults in its code.",
        default_factory=dict, maxProperties=256,
    )
    resources: Resources = field("GPUs, CPU and memory of the trainer.", default_factory=Resources)
    node_selector: dict[str, str] = field("Node labels the pod must match (added to the GPU type's).",
                                          default_factory=dict, maxProperties=64)
    tolerations: list[Toleration] = field(
        "Tolerations of the pod; one for nvidia.com/gpu NoSchedule taints is added when gpus > 0.",
        default_factory=list, maxItems=64)
    priority_class_name: str | None = field("PriorityClass of the pod.", maxLength=253)
    service_account_name: str | None = field(
        "ServiceAccount of the pod; without one the pod gets no API token.", maxLength=253)
    backoff_limit: int = field(
        "Retries after failures of the trainer (non-zero exit, a command that cannot start, OOM, a full run "
        "volume) before the run is Failed. Infrastructure failures count against infrastructureRetryLimit.",
        3, minimum=0, maximum=100)
    infrastructure_retry_limit: int = field(
        "Retries after failures that are not the trainer's (eviction, preemption, node loss, a lost pod, a "
        "prepare step that could not reach the stores) before the run is Failed.", 10, minimum=0, maximum=1000)
    pending_deadline_seconds: int = field(
        "Longest time a pod may wait on a problem the kubelet reports and will not solve alone (the image "
        "cannot be pulled or is invalid, a missing Secret or ConfigMap) before the run is Failed. Waiting "
        "for a node does not count.", 900, minimum=1)
    run_volume_size_limit: str = field(
        "Size limit of the run directory (an emptyDir on the node's disk: logs, artifacts, checkpoints, a "
        "staged dataset), as a Kubernetes quantity. A pod that writes more is evicted, which counts against "
        "backoffLimit.", "50Gi", pattern=QUANTITY, maxLength=32)
    active_deadline_seconds: int | None = field(
        "Longest time the run may be active, over every attempt, before it is Failed.", minimum=1)
    ttl_seconds_after_finished: int | None = field(
        "Seconds after the run finishes before the TrainingRun is deleted (records in the store are kept).",
        minimum=0)
    suspend: bool = field("Stop the run's pod (true) and start a new attempt later (false).", False)
    code: Code | None = field("Code version of the trainer.")
    dataset: Dataset | None = field("Dataset the run reads.")
    tracking: Tracking = field("Live tracking settings.", default_factory=Tracking)
    register_model: RegisterModel | None = field(
        "Register the files at artifactPath as the next version of a model when the run succeeds, with the "
        "run's lineage (image digest, code commit, dataset digest, params, the sha256 of every file).")


@dataclass(kw_only=True)
class Condition:
    """A condition of the run, per the Kubernetes API conventions."""

    type: str = field(
        "Type of condition: Ready, Reconciling, Stalled (the kstatus conventions read by Flux and kubectl), "
        "Scheduled, Retrying, Suspended, Complete or Failed. Ready is True while the run is Running (not "
        "waiting to retry) or has Succeeded; Reconciling is True while it is Pending or waiting to retry; "
        "Stalled is True when it has Failed or its pod is stuck on a problem a person must fix.", required=True)
    status: str = field("True, False or Unknown.", required=True, enum=["True", "False", "Unknown"])
    reason: str | None = field("Machine-readable reason of the last transition.")
    message: str | None = field("Human-readable details.")
    last_transition_time: str | None = field("When the status last changed.", format="date-time")
    observed_generation: int | None = field("The .metadata.generation the condition was set from.")


@dataclass(kw_only=True)
class TrainingRunStatus:
    """What the operator observed of the run."""

    phase: str | None = field("Pending, Running, Succeeded, Failed or Suspended.", enum=PHASES)
    reason: str | None = field("Why the run is in its phase (for example OOMKilled, Unschedulable).")
    message: str | None = field("Human-readable details of the phase.")
    conditions: list[Condition] = field("Conditions of the run.", default_factory=list,
                                        **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    observed_generation: int | None = field("The .metadata.generation last acted on.")
    run_id: str | None = field("Id of the run in the tracking store (cairn runs show ID): the TrainingRun's uid.")
    attempts: int | None = field("Pods created for the run so far.")
    failures: int | None = field("Attempts that failed and count against backoffLimit.")
    infrastructure_retries: int | None = field("Attempts that failed and count against infrastructureRetryLimit.")
    retry_after: str | None = field("When the next attempt starts, while waiting to retry.", format="date-time")
    start_time: str | None = field("When the first attempt started running.", format="date-time")
    completion_time: str | None = field("When the run finished.", format="date-time")
    pod_name: str | None = field("Pod of the current attempt.")
    node_name: str | None = field("Node of the current attempt.")
    gpu_product: str | None = field("GPU model of that node (label nvidia.com/gpu.product).")
    image_digest: str | None = field("Digest of the trainer image that ran (from the pod's imageID).")
    exit_code: int | None = field("Exit code of the trainer in the last attempt.")
    step: int | None = field("Latest step recorded.")
    metric: str | None = field("Latest value of the headline metric.")


@dataclass(kw_only=True)
class TrainingRun:
    """A typed TrainingRun: the parts of the object the operator reads."""

    name: str
    namespace: str
    uid: str
    spec: TrainingRunSpec
    status: TrainingRunStatus
    generation: int | None = None
