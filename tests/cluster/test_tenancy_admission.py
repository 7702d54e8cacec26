"""The API server enforces the tenancy admission rules (crds/tenancy/cairn-tenancy.yaml), naming the field.

The cluster is shared by every test run: the policies are applied under names of this module's own,
and their bindings match only the namespaces this module labels, so no other test meets them.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator

import pytest

from cairn.api import tenancy
from tests.support.cluster import Kubectl, wait_until
from tests.support.cluster_operator import install_crd

pytestmark = pytest.mark.cluster

SCOPE_LABEL = "cairn.dev/tenancy-test"
BUCKET = "cairn"


def run_doc(name: str, **spec) -> dict:  # noqa: ANN003
    return {"apiVersion": "cairn.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": name},
            "spec": {"image": "cairn:dev", "command": ["python3", "train.py"], **spec}}


def scoped(docs: list[dict], suffix: str, scope: str) -> list[dict]:
    """The generated policies renamed for this module, bound to namespaces labelled with `scope` only."""
    out = copy.deepcopy(docs)
    for doc in out:
        doc["metadata"]["name"] = f"{suffix}.{doc['metadata']['name']}"
        if doc["kind"] == "ValidatingAdmissionPolicyBinding":
            doc["spec"]["policyName"] = f"{suffix}.{doc['spec']['policyName']}"
            doc["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {SCOPE_LABEL: scope}}}
    return out


class Tenants:
    def __init__(self, kubectl: Kubectl, scope: str) -> None:
        self.kubectl = kubectl
        self.scope = scope
        self.admin, self.a, self.b, self.disabled = (f"cairn-tenancy-{scope}-{n}" for n in ("admin", "a", "b", "off"))

    def dry_run(self, namespace: str, doc: dict, *as_user: str):  # noqa: ANN201
        return self.kubectl.run("-n", namespace, "create", "--dry-run=server", *as_user, "-f", "-",
                                input=json.dumps(doc), check=False)

    def refused(self, namespace: str, doc: dict, *as_user: str) -> str:
        r = self.dry_run(namespace, doc, *as_user)
        assert r.returncode != 0, f"admitted in {namespace}: {json.dumps(doc)}"
        assert "denied request" in r.stderr, r.stderr  # by an admission policy, not the schema
        return r.stderr

    def admitted(self, namespace: str, doc: dict, *as_user: str) -> None:
        r = self.dry_run(namespace, doc, *as_user)
        assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def tenants(kubectl: Kubectl) -> Iterator[Tenants]:
    install_crd(kubectl)
    scope = uuid.uuid4().hex[:8]
    t = Tenants(kubectl, scope)
    settings = {**tenancy.DEFAULTS, "bucket": BUCKET, "sharedDatasetPrefixes": f"s3://{BUCKET}/shared, s3://public/",
                f"serviceAccounts.{t.a}": "default,trainer"}
    docs = [*scoped(tenancy.tenancy_policy(settings), scope, scope),
            *scoped(tenancy.operator_pods_policy(t.admin, "op"), scope, scope)]
    # Impersonating the operator's ServiceAccount needs a right to create pods in the tenants' namespaces.
    for ns in (t.a, t.disabled):
        docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                     "metadata": {"name": "operator-pods", "namespace": ns},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                     "subjects": [{"kind": "ServiceAccount", "name": "op", "namespace": t.admin}]})
    try:
        for ns in (t.admin, t.a, t.b, t.disabled):
            kubectl.run("create", "namespace", ns)
        for ns in (t.a, t.b, t.disabled):
            kubectl.run("label", "namespace", ns, f"{SCOPE_LABEL}={scope}")
        for ns in (t.a, t.b):
            kubectl.run("label", "namespace", ns, f"{tenancy.TENANT_LABEL}={tenancy.TENANT_ENABLED}")
        kubectl.run("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        # The API server loads new policies asynchronously: wait until the first rule bites.
        wait_until(lambda: t.dry_run(t.disabled, run_doc("probe")).returncode != 0, 60, "the tenancy policy in force")
        yield t
    finally:
        for doc in docs:
            if "namespace" not in doc["metadata"]:
                kubectl.run("delete", doc["kind"], doc["metadata"]["name"], "--ignore-not-found", check=False)
        for ns in (t.admin, t.a, t.b, t.disabled):
            kubectl.run("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def test_a_run_in_a_namespace_not_enabled_is_refused_saying_what_to_ask(tenants):
    message = tenants.refused(tenants.disabled, run_doc("off"))
    assert f"namespace {tenants.disabled} is not enabled for Cairn" in message, message
    assert "ask the cluster admin to label it cairn.dev/tenant=enabled" in message, message


def test_a_well_behaved_run_is_admitted(tenants):
    tenants.admitted(tenants.a, run_doc(
        "good", dataset={"uri": f"s3://{BUCKET}/{tenants.a}/mnist/", "stage": True},
        env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "team-token", "key": "token"}}},
             {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cairn-settings", "key": "mode"}}}],
        resources={"gpus": 1, "gpuType": "NVIDIA-H100"},
        nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        serviceAccountName="default"))


@pytest.mark.parametrize("spec, field, words", [
    ({"env": [{"name": "A", "value": "1"},
              {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "cairn-database", "key": "url"}}}]},
     "spec.env[1].valueFrom.secretKeyRef.name", "cairn-database is a Secret Cairn manages"),
    ({"dataset": {"uri": "s3://cairn/{b}/mnist/"}}, "spec.dataset.uri", "outside this namespace's s3://cairn/{a}/"),
    ({"dataset": {"uri": "s3://cairn/{a}/../{b}/mnist/"}}, "spec.dataset.uri", "has a . or .. path segment"),
    ({"dataset": {"uri": "s3://cairn/{a}"}}, "spec.dataset.uri", "outside this namespace's"),
    ({"serviceAccountName": "builder"}, "spec.serviceAccountName", "builder is not allowed in namespace {a}"),
    ({"priorityClassName": "system-node-critical"}, "spec.priorityClassName", "allowed: none"),
    ({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"},
                      {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
     "spec.tolerations[1].key", "node-role.kubernetes.io/control-plane is not allowed"),
    ({"tolerations": [{"operator": "Exists"}]}, "spec.tolerations[0].key", "(any key) is not allowed"),
    ({"nodeSelector": {"kubernetes.io/hostname": "gpu-7"}}, "spec.nodeSelector.kubernetes.io/hostname",
     "this node label is not allowed"),
], ids=["cairn-secret", "other-namespace-dataset", "dot-dot-dataset", "namespace-prefix-without-slash",
        "service-account", "priority-class", "toleration", "toleration-of-every-taint", "node-selector"])
def test_a_run_breaking_a_rule_is_refused_naming_the_field(tenants, spec, field, words):
    spec = json.loads(json.dumps(spec).replace("{a}", tenants.a).replace("{b}", tenants.b))
    message = tenants.refused(tenants.a, run_doc("bad", **spec))
    assert field + ":" in message, message
    assert words.replace("{a}", tenants.a) in message, message


def test_shared_prefixes_and_per_namespace_service_accounts_come_from_the_admins_settings(tenants):
    for uri in (f"s3://{BUCKET}/shared/imagenet/", "s3://public/cifar10/"):
        tenants.admitted(tenants.b, run_doc("shared", dataset={"uri": uri}))
    tenants.refused(tenants.b, run_doc("prefix-lookalike", dataset={"uri": f"s3://{BUCKET}/shared-not/x/"}))
    tenants.admitted(tenants.a, run_doc("trainer", serviceAccountName="trainer"))
    message = tenants.refused(tenants.b, run_doc("trainer", serviceAccountName="trainer"))
    assert "spec.serviceAccountName: trainer is not allowed" in message and "(allowed: default;" in message, message


def test_a_run_admitted_before_its_namespace_was_disabled_can_still_be_finalized(tenants, kubectl):
    ns = tenants.b
    kubectl.apply(run_doc("before"), namespace=ns)
    kubectl.run("label", "namespace", ns, f"{tenancy.TENANT_LABEL}-")
    try:
        kubectl.run("-n", ns, "patch", "tr", "before", "--type=merge",
                    "-p", json.dumps({"metadata": {"finalizers": ["cairn.dev/finalizer"]}}))
        r = kubectl.run("-n", ns, "patch", "tr", "before", "--type=merge", "-p", '{"spec":{"suspend":true}}',
                        check=False)
        assert r.returncode != 0 and "is not enabled for Cairn" in r.stderr, r.stderr
        kubectl.run("-n", ns, "patch", "tr", "before", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
        kubectl.run("-n", ns, "delete", "tr", "before", "--wait=true", "--timeout=30s")
    finally:
        kubectl.run("label", "namespace", ns, f"{tenancy.TENANT_LABEL}={tenancy.TENANT_ENABLED}")


def test_the_operator_creates_pods_only_in_enabled_namespaces(tenants):
    as_operator = f"--as=system:serviceaccount:{tenants.admin}:op"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "attempt"},
           "spec": {"containers": [{"name": "trainer", "image": "cairn:dev"}]}}
    tenants.admitted(tenants.a, pod, as_operator)
    message = tenants.refused(tenants.disabled, pod, as_operator)
    assert f"may create pods only in namespaces labelled cairn.dev/tenant=enabled; {tenants.disabled} is not" \
        in message, message
    tenants.admitted(tenants.disabled, pod)  # anyone else: not this policy's business
