"""The Model and Evaluation resources (cairn.dev/v1alpha1): a model's required evaluation, and one run of it.

A Model declares how its versions are evaluated (the eval suite: image, command, pinned dataset) and what
a candidate must show to replace the holder of an alias (the gate, read by ``cairn.gates.gate_spec_from``:
the field names are the gate's manifest keys). Its versions and aliases live in the store; the operator
copies them into status. An Evaluation runs the suite on a candidate version and on the alias's holder
and stores the gate's verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn.api.schema import field
from cairn.api.types import MODEL_NAME, SHA256, EnvVar, Resources

MODEL_KIND, MODEL_PLURAL, MODEL_SINGULAR = "Model", "models", "model"
EVALUATION_KIND, EVALUATION_PLURAL, EVALUATION_SINGULAR = "Evaluation", "evaluations", "evaluation"
ALIAS = r"^[a-z][a-z0-9_-]{0,62}$"  # as the store's registry checks it
# An Evaluation's runs are named "<evaluation>-candidate" and "<evaluation>-baseline" (TrainingRun names
# are at most 50 characters).
MAX_EVALUATION_NAME_LENGTH = 40
DIRECTIONS = ["higher", "lower"]
EVALUATION_PHASES = ["Pending", "Running", "Succeeded", "Failed"]
VERDICTS = ["pass", "fail", "not_enough_evidence"]


@dataclass(kw_only=True)
class EvalDataset:
    """The evaluation dataset, pinned: both versions are evaluated on exactly these bytes."""

    uri: str = field("S3 prefix of the dataset, s3://bucket/prefix.", required=True,
                     pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", maxLength=2048)
    sha256: str = field("Content digest (64 hex digits); an eval run fails before evaluating when the data differs.",
                        required=True, pattern=SHA256)
    stage: bool = field("Copy the dataset into the pod first, at $CAIRN_DATASET_DIR (as a TrainingRun's).", False)


@dataclass(kw_only=True)
class EvalSuite:
    """How one version is evaluated: a tracked run of the eval image that reports one record per example
    (cairn.log_example). The run gets the version's files at $CAIRN_MODEL_URI and the params model,
    model_version and model_uri."""

    image: str = field("Container image of the evaluation code; pin it by digest (image@sha256:...) so "
                       "results of earlier evaluations can be reused.", required=True, minLength=1, maxLength=1024,
                       pattern=r"^[^\s]+$")
    command: list[str] = field("Command of the evaluation code.", required=True, default_factory=list, minItems=1,
                               maxItems=64, items={"minLength": 1})
    args: list[str] = field("Arguments appended to the command.", default_factory=list, maxItems=256)
    env: list[EnvVar] = field("Environment variables of the evaluation code.", default_factory=list, maxItems=128,
                              **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    dataset: EvalDataset = field("The pinned evaluation dataset.", required=True)
    resources: Resources = field("GPUs, CPU and memory of an eval run.", default_factory=Resources)


@dataclass(kw_only=True)
class GateGuard:
    """A metric the candidate must not make worse by more than its tolerance."""

    metric: str = field("Per-example metric name.", required=True, minLength=1, maxLength=250)
    direction: str = field("Which way is better.", required=True, enum=DIRECTIONS)
    tolerance: float = field("How much worse it may get, in the metric's units.", required=True, minimum=0)


@dataclass(kw_only=True)
class Gate:
    """What a candidate must show to replace the holder of an alias (docs/evaluation-gates.md)."""

    primary: str = field("Per-example metric the decision is about.", required=True, minLength=1, maxLength=250)
    direction: str = field("Which way is better.", required=True, enum=DIRECTIONS)
    min_improvement: float = field("Smallest improvement of the primary metric's mean that matters.",
                                   required=True, minimum=0)
    confidence: float = field("One-sided confidence of every bound.", 0.95, minimum=0.5, exclusiveMinimum=True,
                              maximum=1, exclusiveMaximum=True)
    guards: list[GateGuard] = field("Metrics that must not get worse by more than their tolerance.",
                                    default_factory=list, maxItems=32,
                                    **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["metric"]})
    slices: list[str] = field("Slice labels within which the primary metric must hold (sliceTolerance).",
                              default_factory=list, maxItems=64, items={"minLength": 1, "maxLength": 250},
                              **{"x-kubernetes-list-type": "set"})
    slice_tolerance: float = field("How much worse the primary metric may get within a slice.", 0.0, minimum=0)
    min_examples: int = field("Fewer paired examples (overall or in a slice) is not enough evidence.", 30, minimum=2)
    max_unpaired_fraction: float = field("Largest share of example ids seen on one side only.", 0.0, minimum=0,
                                         maximum=1)
    resamples: int = field("Bootstrap resamples.", 10_000, minimum=100, maximum=1_000_000)
    seed: int = field("Seed of the bootstrap.", 0, minimum=0)


@dataclass(kw_only=True)
class ModelSpec:
    """The model's required evaluation."""

    evaluation: EvalSuite = field("The eval suite every candidate version runs.", required=True)
    gate: Gate = field("The decision a candidate must pass before it takes an alias.", required=True)


@dataclass(kw_only=True)
class ModelStatus:
    """The model's versions and aliases as the store has them, copied by the operator."""

    aliases: dict[str, int] = field("Version behind each alias.", default_factory=dict)
    versions: int | None = field("Number of registered versions.")
    latest_version: int | None = field("Highest version number.")
    synced_at: str | None = field("When the operator last copied the store's view.", format="date-time")


@dataclass(kw_only=True)
class EvaluationSpec:
    """Evaluate a candidate version against the version an alias names."""

    __validations__ = [{"rule": "self == oldSelf", "message": "an Evaluation's spec cannot change after creation",
                        "reason": "FieldValueForbidden"}]

    model: str = field("Model (in this namespace).", required=True, pattern=MODEL_NAME, maxLength=253)
    candidate_version: int = field("Version to evaluate.", required=True, minimum=1)
    alias: str = field("Alias whose holder is the baseline.", "production", pattern=ALIAS)


@dataclass(kw_only=True)
class EvaluationStatus:
    """Where the evaluation stands, and the verdict with its numbers."""

    phase: str | None = field("Pending, Running, Succeeded (a verdict is stored) or Failed (none could be).",
                              enum=EVALUATION_PHASES)
    reason: str | None = field("Machine-readable reason of the phase.")
    message: str | None = field("Human-readable details.")
    baseline_version: int | None = field("Version the alias named when the evaluation started.")
    candidate_run: str | None = field("TrainingRun evaluating the candidate.")
    baseline_run: str | None = field("TrainingRun evaluating the baseline; empty when stored results were reused.")
    baseline_run_id: str | None = field("Store id of the baseline's evaluation run (reused or new).")
    candidate_run_id: str | None = field("Store id of the candidate's evaluation run.")
    reused_baseline: bool | None = field("Whether the baseline's stored per-example results were reused.")
    dataset_sha256: str | None = field("Dataset digest both sides were evaluated on.")
    eval_image_digest: str | None = field("Eval image digest both sides ran.")
    verdict: str | None = field("The gate's decision.", enum=VERDICTS)
    passed: bool | None = field("Whether the gate passed (what cairn models promote reads).")
    delta: str | None = field("Candidate minus baseline, primary metric.")
    ci: str | None = field("Confidence interval of the delta.")
    evaluation_id: int | None = field("Id of the stored evaluation (cairn evals show).")
    completion_time: str | None = field("When the verdict was stored.", format="date-time")
