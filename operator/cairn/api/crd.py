"""The CustomResourceDefinitions, generated from ``cairn.api.types`` and ``cairn.api.registry``.

    python -m cairn.api.crd crds/

One file per resource: TrainingRun (with its params policy), Model and Evaluation (``cairn.api.registry``).

The TrainingRun file also holds a ValidatingAdmissionPolicy for ``spec.params``: its values are "string, number
or boolean", which no structural schema can say and which CEL rules inside a CRD cannot see.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from cairn.api import registry as R
from cairn.api import types as T
from cairn.api.schema import object_schema


def _crd(kind: str, plural: str, singular: str, short_names: list[str], description: str, spec: type,
         status: type, columns: list[dict[str, Any]], validations: list[dict[str, str]] = ()) -> dict[str, Any]:
    root: dict[str, Any] = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string",
                           "description": f"Versioned schema of this object ({T.GROUP}/{T.VERSION})."},
            "kind": {"type": "string", "description": f"{kind}."},
            "metadata": {"type": "object"},
            "spec": object_schema(spec),
            "status": object_schema(status),
        },
    }
    if validations:
        root["x-kubernetes-validations"] = list(validations)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{T.GROUP}"},
        "spec": {
            "group": T.GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": singular,
                      "shortNames": short_names, "categories": T.CATEGORIES},
            "versions": [{
                "name": T.VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": root},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
            }],
        },
    }


def _name_at_most(length: int, why: str) -> dict[str, str]:
    return {"rule": f"self.metadata.name.size() <= {length}",
            "message": f"metadata.name must be at most {length} characters ({why})", "reason": "FieldValueInvalid"}


def trainingrun_crd() -> dict[str, Any]:
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase of the run."},
        {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus", "description": "GPUs requested."},
        {"name": "Attempts", "type": "integer", "jsonPath": ".status.attempts", "description": "Pods created.",
         "priority": 1},
        {"name": "Step", "type": "integer", "jsonPath": ".status.step", "description": "Latest step recorded."},
        {"name": "Metric", "type": "string", "jsonPath": ".spec.tracking.headlineMetric",
         "description": "Name of the headline metric."},
        {"name": "Value", "type": "string", "jsonPath": ".status.metric",
         "description": "Latest value of the headline metric."},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1,
         "description": "Why the run is in its phase."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(T.KIND, T.PLURAL, T.SINGULAR, T.SHORT_NAMES,
                "A tracked training run: a GPU pod with a tracking sidecar, retried and recorded by Cairn.",
                T.TrainingRunSpec, T.TrainingRunStatus, columns,
                [_name_at_most(T.MAX_NAME_LENGTH, "pod names add an attempt number")])


def model_crd() -> dict[str, Any]:
    columns = [
        {"name": "Production", "type": "integer", "jsonPath": ".status.aliases.production",
         "description": "Version behind the production alias."},
        {"name": "Candidate", "type": "integer", "jsonPath": ".status.aliases.candidate",
         "description": "Version behind the candidate alias."},
        {"name": "Versions", "type": "integer", "jsonPath": ".status.versions", "description": "Registered versions."},
        {"name": "Latest", "type": "integer", "jsonPath": ".status.latestVersion", "priority": 1,
         "description": "Highest version number."},
        {"name": "Primary", "type": "string", "jsonPath": ".spec.gate.primary", "priority": 1,
         "description": "Metric the gate decides on."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(R.MODEL_KIND, R.MODEL_PLURAL, R.MODEL_SINGULAR, ["mdl"],
                "A registered model: the evaluation every candidate version must pass, and (in status) the "
                "versions behind its aliases.", R.ModelSpec, R.ModelStatus, columns)


def evaluation_crd() -> dict[str, Any]:
    columns = [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model", "description": "Model evaluated."},
        {"name": "Candidate", "type": "integer", "jsonPath": ".spec.candidateVersion",
         "description": "Version evaluated."},
        {"name": "Baseline", "type": "integer", "jsonPath": ".status.baselineVersion",
         "description": "Version the alias named."},
        {"name": "Delta", "type": "string", "jsonPath": ".status.delta",
         "description": "Candidate minus baseline, primary metric."},
        {"name": "CI", "type": "string", "jsonPath": ".status.ci", "description": "Confidence interval of the delta."},
        {"name": "Verdict", "type": "string", "jsonPath": ".status.verdict", "description": "The gate's decision."},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "priority": 1,
         "description": "Phase of the evaluation."},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1,
         "description": "Why it is in its phase."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(R.EVALUATION_KIND, R.EVALUATION_PLURAL, R.EVALUATION_SINGULAR, ["evals"],
                "An evaluation of a candidate version against the holder of an alias: eval runs of both on the "
                "model's pinned dataset, then the gate's verdict, stored with every number.",
                R.EvaluationSpec, R.EvaluationStatus, columns,
                [_name_at_most(R.MAX_EVALUATION_NAME_LENGTH, "its runs add -candidate and -baseline")])


PARAMS_POLICY = f"trainingrun-params.{T.GROUP}"


def params_policy() -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy and its binding: param names and value types, params immutable.

    Names and types are checked on CREATE only, and on UPDATE only that params did not change, so
    an object admitted before the policy existed can still get its finalizer removed.
    """
    key = T.PARAM_KEY
    scalar = ("type(variables.params[k]) == string || type(variables.params[k]) == int"
              " || type(variables.params[k]) == double || type(variables.params[k]) == bool")
    creating = "request.operation != 'CREATE'"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": PARAMS_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [T.GROUP], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                "resources": [T.PLURAL],
            }]},
            "variables": [
                {"name": "params", "expression": "has(object.spec.params) ? object.spec.params : {}"},
                {"name": "oldParams",
                 "expression": "oldObject != null && has(oldObject.spec.params) ? oldObject.spec.params : {}"},
            ],
            "validations": [
                {"expression": f"{creating} || variables.params.all(k, k.matches(r'{key}'))",
                 "messageExpression": f"'spec.params.' + variables.params.filter(k, !k.matches(r'{key}'))[0]"
                                      " + ': a param name starts with a letter or _, then letters, digits, _ . - /"
                                      " (250 characters at most)'",
                 "reason": "Invalid"},
                {"expression": f"{creating} || variables.params.all(k, {scalar})",
                 "messageExpression": f"'spec.params.' + variables.params.filter(k, !({scalar}))[0]"
                                      " + ': a param value is a string, number or boolean'",
                 "reason": "Invalid"},
                {"expression": "request.operation != 'UPDATE' || variables.params == variables.oldParams",
                 "message": "spec.params: cannot change after creation (the run is recorded with them)",
                 "reason": "Invalid"},
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": PARAMS_POLICY},
        "spec": {"policyName": PARAMS_POLICY, "validationActions": ["Deny"]},
    }
    return [policy, binding]


HEADER = "# Generated from operator/cairn/api/ by `python -m cairn.api.crd crds/`; do not edit.\n"


def _render(*docs: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump_all(list(docs), sort_keys=False, width=120)


def rendered_files() -> dict[str, str]:
    """Each file of ``crds/`` by name, with its text."""
    return {
        f"{T.PLURAL}.{T.GROUP}.yaml": _render(trainingrun_crd(), *params_policy()),
        f"{R.MODEL_PLURAL}.{T.GROUP}.yaml": _render(model_crd()),
        f"{R.EVALUATION_PLURAL}.{T.GROUP}.yaml": _render(evaluation_crd()),
    }


def render() -> str:
    """The TrainingRun CRD's file."""
    return rendered_files()[f"{T.PLURAL}.{T.GROUP}.yaml"]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m cairn.api.crd DIRECTORY (crds/)")
    for name, text in rendered_files().items():
        (Path(sys.argv[1]) / name).write_text(text)
