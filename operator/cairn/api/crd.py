"""The TrainingRun CustomResourceDefinition, generated from ``cairn.api.types``.

    python -m cairn.api.crd > crds/trainingruns.cairn.dev.yaml

The file also holds a ValidatingAdmissionPolicy for ``spec.params``: its values are "string, number
or boolean", which no structural schema can say and which CEL rules inside a CRD cannot see.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from cairn.api import types as T
from cairn.api.schema import object_schema


def trainingrun_crd() -> dict[str, Any]:
    spec_schema = object_schema(T.TrainingRunSpec)
    status_schema = object_schema(T.TrainingRunStatus)
    root = {
        "type": "object",
        "description": "A tracked training run: a GPU pod with a tracking sidecar, retried and recorded by Cairn.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "Versioned schema of this object (cairn.dev/v1alpha1)."},
            "kind": {"type": "string", "description": "TrainingRun."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [
            {"rule": f"self.metadata.name.size() <= {T.MAX_NAME_LENGTH}",
             "message": f"metadata.name must be at most {T.MAX_NAME_LENGTH} characters (pod names add an attempt number)",
             "reason": "FieldValueInvalid"},
        ],
    }
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
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{T.PLURAL}.{T.GROUP}"},
        "spec": {
            "group": T.GROUP,
            "scope": "Namespaced",
            "names": {"kind": T.KIND, "listKind": f"{T.KIND}List", "plural": T.PLURAL, "singular": T.SINGULAR,
                      "shortNames": T.SHORT_NAMES, "categories": T.CATEGORIES},
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


def render() -> str:
    header = "# Generated from operator/cairn/api/types.py by `python -m cairn.api.crd`; do not edit.\n"
    return header + yaml.safe_dump_all([trainingrun_crd(), *params_policy()], sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
