"""The TrainingRun CustomResourceDefinition, generated from ``cairn.api.types``.

    python -m cairn.api.crd > crds/trainingruns.cairn.dev.yaml
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


def render() -> str:
    header = "# Generated from operator/cairn/api/types.py by `python -m cairn.api.crd`; do not edit.\n"
    return header + yaml.safe_dump(trainingrun_crd(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
