"""Admission rules that make a namespace a tenant: ValidatingAdmissionPolicies (CEL), generated here.

    python -m cairn.api.tenancy > crds/tenancy/cairn-tenancy.yaml

Two policies, enforced by the API server itself:

- ``tenancy.cairn.dev`` on TrainingRuns: the namespace is labelled ``cairn.dev/tenant=enabled``; no
  env var reads a Cairn-managed Secret (``cairn-*``); the dataset is under ``s3://<bucket>/<namespace>/``
  or a shared prefix; the ServiceAccount, PriorityClass, toleration keys and nodeSelector keys are
  the ones the admin allows. What is allowed is written into the policy itself (its ``settings``
  variable, a map the chart renders from its ``tenancy`` values): a cluster-scoped object only the
  cluster admin can change. A key missing there falls back to the safe defaults below. Per namespace,
  ``<setting>.<namespace>`` replaces ``<setting>``. Lists are comma-separated.

  Not a ConfigMap param (``paramKind``): the API server can lose a param it watches when policy,
  binding and ConfigMap are recreated together, as an uninstall and install does
  (kubernetes/kubernetes#133827), and then refuses every TrainingRun until it restarts.
- ``operator-pods.cairn.dev`` on Pods created by the operator's ServiceAccount: only in enabled
  namespaces. Unlike a RoleBinding per namespace, it follows the label at admission time, so an
  admin enables a namespace with one label and the operator needs no right to create RoleBindings.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

from cairn.api import types as T

TENANT_LABEL = "cairn.dev/tenant"
TENANT_ENABLED = "enabled"
MANAGED_SECRET_PREFIX = "cairn-"
TENANCY_POLICY = f"tenancy.{T.GROUP}"
OPERATOR_PODS_POLICY = f"operator-pods.{T.GROUP}"
# Where the companion manifest expects the operator; the chart puts its own release's names in.
DEFAULT_NAMESPACE = "cairn-system"
DEFAULT_OPERATOR_SERVICE_ACCOUNT = "cairn-operator"

# Safe defaults: the default ServiceAccount, no PriorityClass, only the GPU toleration and node label.
DEFAULTS = {
    "bucket": "cairn",
    "sharedDatasetPrefixes": "",
    "serviceAccounts": "default",
    "priorityClasses": "",
    "tolerationKeys": "nvidia.com/gpu",
    "nodeSelectorKeys": T.GPU_PRODUCT_LABEL,
}


def _setting(key: str) -> str:
    """CEL: the namespace's value of a setting, else the cluster-wide one, else the default."""
    return (f"variables.settings[?'{key}.' + request.namespace]"
            f".orValue(variables.settings[?'{key}'].orValue('{DEFAULTS[key]}'))")


def _list_setting(key: str) -> str:
    return f"{_setting(key)}.split(',').map(s, s.trim()).filter(s, s != '')"


def _allowed(variable: str) -> str:
    """CEL: the allowed values for a message, or "none"."""
    return f"(variables.{variable}.size() == 0 ? 'none' : variables.{variable}.join(', '))"


def tenancy_policy(settings: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The TrainingRun policy with the admin's ``settings`` (keys of DEFAULTS, maybe ``.<namespace>``)."""
    where = "the tenancy settings (Helm values tenancy.*)"
    env_secret = (f"e.?valueFrom.?secretKeyRef.?name.orValue('').startsWith('{MANAGED_SECRET_PREFIX}')")
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": TENANCY_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [T.GROUP], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                "resources": [T.PLURAL],
            }]},
            # Metadata-only updates (the operator's finalizer) pass, so a run admitted before a rule
            # changed can still be deleted.
            "matchConditions": [{"name": "spec-written",
                                 "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec"}],
            "variables": [
                # JSON is a CEL map literal.
                {"name": "settings", "expression": json.dumps(DEFAULTS if settings is None else settings)},
                {"name": "enabled", "expression": f"namespaceObject.metadata.?labels[?'{TENANT_LABEL}']"
                                                  f".orValue('') == '{TENANT_ENABLED}'"},
                {"name": "env", "expression": "object.spec.?env.orValue([])"},
                {"name": "secretEnv", "expression": f"variables.env.filter(e, {env_secret})"},
                {"name": "uri", "expression": "object.spec.?dataset.?uri.orValue('')"},
                {"name": "ownPrefix", "expression": f"'s3://' + {_setting('bucket')} + '/' + request.namespace + '/'"},
                {"name": "sharedPrefixes", "expression": f"{_list_setting('sharedDatasetPrefixes')}"
                                                         ".map(p, p.endsWith('/') ? p : p + '/')"},
                {"name": "serviceAccounts", "expression": _list_setting("serviceAccounts")},
                {"name": "priorityClasses", "expression": _list_setting("priorityClasses")},
                {"name": "tolerationKeys", "expression": _list_setting("tolerationKeys")},
                {"name": "nodeSelectorKeys", "expression": _list_setting("nodeSelectorKeys")},
                {"name": "tolerations", "expression": "object.spec.?tolerations.orValue([])"},
                {"name": "badTolerations", "expression": "variables.tolerations.filter(t, "
                                                         "!(t.?key.orValue('') in variables.tolerationKeys))"},
                {"name": "badNodeSelectorKeys", "expression": "object.spec.?nodeSelector.orValue({}).filter(k, "
                                                              "!(k in variables.nodeSelectorKeys))"},
            ],
            "validations": [
                {"expression": "variables.enabled",
                 "messageExpression": f"'namespace ' + request.namespace + ' is not enabled for Cairn: ask the "
                                      f"cluster admin to label it {TENANT_LABEL}={TENANT_ENABLED}'",
                 "reason": "Forbidden"},
                {"expression": "variables.secretEnv.size() == 0",
                 "messageExpression": "'spec.env[' + string(variables.env.indexOf(variables.secretEnv[0])) + "
                                      "'].valueFrom.secretKeyRef.name: ' + "
                                      "variables.secretEnv[0].valueFrom.secretKeyRef.name + "
                                      f"' is a Secret Cairn manages ({MANAGED_SECRET_PREFIX}*); "
                                      "a TrainingRun may not read it'",
                 "reason": "Forbidden"},
                {"expression": "variables.uri == '' || !variables.uri.matches('/[.]{1,2}(/|$)')",
                 "messageExpression": "'spec.dataset.uri: ' + variables.uri + ' has a . or .. path segment'",
                 "reason": "Invalid"},
                {"expression": "variables.uri == '' || variables.uri.startsWith(variables.ownPrefix) || "
                               "variables.sharedPrefixes.exists(p, variables.uri.startsWith(p))",
                 "messageExpression": "'spec.dataset.uri: ' + variables.uri + ' is outside this namespace\\'s '"
                                      "+ variables.ownPrefix + ' and the shared prefixes (' "
                                      f"+ {_allowed('sharedPrefixes')} + ')'",
                 "reason": "Forbidden"},
                {"expression": "object.spec.?serviceAccountName.orValue('') in [''] + variables.serviceAccounts",
                 "messageExpression": "'spec.serviceAccountName: ' + object.spec.serviceAccountName + "
                                      "' is not allowed in namespace ' + request.namespace + ' (allowed: ' + "
                                      f"{_allowed('serviceAccounts')} + '; the admin lists them in {where})'",
                 "reason": "Forbidden"},
                {"expression": "object.spec.?priorityClassName.orValue('') in [''] + variables.priorityClasses",
                 "messageExpression": "'spec.priorityClassName: ' + object.spec.priorityClassName + "
                                      "' is not allowed in namespace ' + request.namespace + ' (allowed: ' + "
                                      f"{_allowed('priorityClasses')} + '; the admin lists them in {where})'",
                 "reason": "Forbidden"},
                {"expression": "variables.badTolerations.size() == 0",
                 "messageExpression": "'spec.tolerations[' + "
                                      "string(variables.tolerations.indexOf(variables.badTolerations[0])) + "
                                      "'].key: ' + variables.badTolerations[0].?key.orValue('(any key)') + "
                                      "' is not allowed in namespace ' + request.namespace + ' (allowed: ' + "
                                      f"{_allowed('tolerationKeys')} + '; the admin lists them in {where})'",
                 "reason": "Forbidden"},
                {"expression": "variables.badNodeSelectorKeys.size() == 0",
                 "messageExpression": "'spec.nodeSelector.' + variables.badNodeSelectorKeys[0] + "
                                      "': this node label is not allowed in namespace ' + request.namespace + "
                                      f"' (allowed: ' + {_allowed('nodeSelectorKeys')} + "
                                      f"'; the admin lists them in {where})'",
                 "reason": "Forbidden"},
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": TENANCY_POLICY},
        "spec": {"policyName": TENANCY_POLICY, "validationActions": ["Deny"]},
    }
    return [policy, binding]


def operator_pods_policy(namespace: str = DEFAULT_NAMESPACE,
                         service_account: str = DEFAULT_OPERATOR_SERVICE_ACCOUNT) -> list[dict[str, Any]]:
    """Pods the operator's ServiceAccount creates: only in namespaces labelled enabled."""
    user = f"system:serviceaccount:{namespace}:{service_account}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": OPERATOR_PODS_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
            }]},
            "matchConditions": [{"name": "by-the-operator", "expression": f"request.userInfo.username == '{user}'"}],
            "validations": [{
                "expression": f"namespaceObject.metadata.?labels[?'{TENANT_LABEL}'].orValue('') == '{TENANT_ENABLED}'",
                "messageExpression": "'the Cairn operator may create pods only in namespaces labelled "
                                     f"{TENANT_LABEL}={TENANT_ENABLED}; ' + request.namespace + ' is not'",
                "reason": "Forbidden",
            }],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": OPERATOR_PODS_POLICY},
        "spec": {"policyName": OPERATOR_PODS_POLICY, "validationActions": ["Deny"]},
    }
    return [policy, binding]


def render() -> str:
    header = ("# Generated from operator/cairn/api/tenancy.py by `python -m cairn.api.tenancy`; do not edit.\n"
              "# The allowed ServiceAccounts, PriorityClasses, ... are the variable `settings` of the first policy.\n"
              f"# Expects the operator as ServiceAccount {DEFAULT_OPERATOR_SERVICE_ACCOUNT} in namespace "
              f"{DEFAULT_NAMESPACE}: change the operator-pods\n# matchCondition when yours differs.\n")
    docs = [*tenancy_policy(), *operator_pods_policy()]
    return header + yaml.safe_dump_all(docs, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
