"""``cairn server`` with ``auth=kubernetes`` and ``auth=proxy`` against the local cluster's API server.

A ServiceAccount holds a Role that grants get/list on TrainingRuns in namespace A only; its token comes
from the TokenRequest API. The app runs in-process (FastAPI's TestClient) and asks the real API server with
TokenReview and SubjectAccessReview. Needs no image: API server and SQLite only (PostgreSQL for tenancy).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from kubernetes import client, config

from cairn.api import GROUP, PLURAL
from cairn.server.access import Identity, KubernetesReviews, OpenAccess, ReviewedAccess
from cairn.server.app import create_app
from cairn.server.settings import ServerSettings
from cairn.server.tenants import SharedStores, TenantStores, kubernetes_secret_reader
from cairn.store import TrackingStore
from cairn.tenancy.database import provision_database
from cairn.tenancy.naming import credentials_secret
from tests.support.cluster import Kubectl, wait_until

pytestmark = pytest.mark.cluster
READER = "run-reader"


class CountedReviews(KubernetesReviews):
    """The real reviews, counted, so the test sees what the cache saves."""

    def __init__(self, api_client: client.ApiClient) -> None:
        super().__init__(api_client)
        self.calls: Counter[str] = Counter()

    def review_token(self, token: str) -> Identity | None:
        self.calls["token"] += 1
        return super().review_token(token)

    def review_access(self, identity: Identity, namespace: str, verb: str) -> bool:
        self.calls["access"] += 1
        return super().review_access(identity, namespace, verb)


@pytest.fixture
def other_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"cairn-test-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kube(kubeconfig) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def grant_reader(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": READER}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": READER},
         "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": READER},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": READER},
         "subjects": [{"kind": "ServiceAccount", "name": READER, "namespace": namespace}]},
        namespace=namespace)
    # RBAC sees a new RoleBinding after a moment; decide nothing before then (a refusal would be cached).
    wait_until(lambda: kubectl.run("auth", "can-i", "list", f"{PLURAL}.{GROUP}", "-n", namespace,
                                   f"--as=system:serviceaccount:{namespace}:{READER}", check=False).stdout.strip()
               == "yes", 30, "the RoleBinding to take effect")


def token_of(kube: client.ApiClient, namespace: str, service_account: str) -> str:
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[],
                                                                                  expiration_seconds=600))
    return client.CoreV1Api(kube).create_namespaced_service_account_token(service_account, namespace,
                                                                         request).status.token


@pytest.fixture
def runs(sqlite_url, namespace, other_namespace) -> tuple[TrackingStore, str, str]:
    store = TrackingStore(sqlite_url)
    mine = store.create_run("nlp", name="in-a", namespace=namespace)
    theirs = store.create_run("nlp", name="in-b", namespace=other_namespace)
    return store, mine, theirs


def test_a_service_account_reads_its_namespace_only(kubectl, kube, namespace, other_namespace, runs):
    store, mine, theirs = runs
    grant_reader(kubectl, namespace)
    token = token_of(kube, namespace, READER)
    reviews = CountedReviews(kube)
    settings = ServerSettings(auth="kubernetes", cache_ttl_seconds=30)
    api = TestClient(create_app(settings, SharedStores(store), ReviewedAccess(settings, reviews)))
    auth = {"Authorization": f"Bearer {token}"}

    listed = api.get(f"/api/v1/namespaces/{namespace}/runs", headers=auth)
    assert [r["id"] for r in listed.json()["runs"]] == [mine]
    assert api.get(f"/api/v1/namespaces/{namespace}/runs/{mine}", headers=auth).json()["name"] == "in-a"
    assert api.get("/api/v1/whoami", headers=auth).json()["user"] == f"system:serviceaccount:{namespace}:{READER}"

    resolve = f"/api/v1/namespaces/{namespace}/runs:resolve"
    assert api.get(resolve, params={"prefix": mine[:8]}, headers=auth).json() == {"ids": [mine]}
    assert api.get(resolve, params={"prefix": theirs}, headers=auth).json() == {"ids": []}  # only A's runs
    assert api.get(f"/api/v1/namespaces/{namespace}/models", headers=auth).json() == {"models": []}

    for url in (f"/api/v1/namespaces/{other_namespace}/runs", f"/api/v1/namespaces/{other_namespace}/runs/{theirs}",
                f"/api/v1/namespaces/{other_namespace}/runs/{uuid.uuid4()}",
                f"/api/v1/namespaces/{other_namespace}/runs:resolve?prefix={theirs[:8]}",
                f"/api/v1/namespaces/{other_namespace}/runs:resolve?name=in-b",
                f"/api/v1/namespaces/{other_namespace}/models",
                f"/api/v1/namespaces/{other_namespace}/models/digits",
                f"/api/v1/namespaces/{other_namespace}/models/digits/evaluations"):
        denied = api.get(url, headers=auth)
        assert denied.status_code == 403, url
        assert other_namespace in denied.json()["error"]
    # B's run asked for under A: the namespace check passes, and A has no such run.
    assert api.get(f"/api/v1/namespaces/{namespace}/runs/{theirs}", headers=auth).status_code == 404

    tokens_reviewed = reviews.calls["token"]
    for _ in range(5):
        assert api.get(f"/api/v1/namespaces/{namespace}/runs", headers=auth).status_code == 200
    assert reviews.calls["token"] == tokens_reviewed  # the identity is cached, not reviewed per request

    no_token = api.get(f"/api/v1/namespaces/{namespace}/runs")
    assert no_token.status_code == 401 and "bearer token" in no_token.json()["error"]
    forged = api.get(f"/api/v1/namespaces/{namespace}/runs", headers={"Authorization": "Bearer not.a.token"})
    assert forged.status_code == 401 and "not valid" in forged.json()["error"]
    assert api.get("/api/v1/healthz").status_code == 200  # the probe needs no identity


def test_the_token_of_a_deleted_service_account_is_refused(kubectl, kube, namespace, runs):
    store, _, _ = runs
    grant_reader(kubectl, namespace)
    token = token_of(kube, namespace, READER)
    settings = ServerSettings(auth="kubernetes", cache_ttl_seconds=0)
    api = TestClient(create_app(settings, SharedStores(store), ReviewedAccess(settings, KubernetesReviews(kube))))
    auth = {"Authorization": f"Bearer {token}"}
    assert api.get(f"/api/v1/namespaces/{namespace}/runs", headers=auth).status_code == 200
    kubectl.run("-n", namespace, "delete", "serviceaccount", READER)
    refused = wait_until(lambda: (r := api.get(f"/api/v1/namespaces/{namespace}/runs", headers=auth)).status_code
                         == 401 and r, 30, "the token to be refused")
    assert "not valid" in refused.json()["error"]


def test_an_authenticating_proxy_is_believed_only_with_its_secret(kubectl, kube, namespace, other_namespace, runs):
    store, mine, _ = runs
    grant_reader(kubectl, namespace)
    settings = ServerSettings(auth="proxy", proxy_secret="proxy-only-secret", cache_ttl_seconds=0)
    api = TestClient(create_app(settings, SharedStores(store), ReviewedAccess(settings, KubernetesReviews(kube))))
    user = {"X-Forwarded-User": f"system:serviceaccount:{namespace}:{READER}",
            "X-Forwarded-Groups": "system:serviceaccounts, system:authenticated"}
    proxied = {**user, "X-Cairn-Proxy-Secret": "proxy-only-secret"}
    listed = api.get(f"/api/v1/namespaces/{namespace}/runs", headers=proxied)
    assert [r["id"] for r in listed.json()["runs"]] == [mine]
    assert api.get("/api/v1/whoami", headers=proxied).json()["groups"] == ["system:serviceaccounts",
                                                                          "system:authenticated"]
    denied = api.get(f"/api/v1/namespaces/{other_namespace}/runs", headers=proxied)
    assert denied.status_code == 403 and other_namespace in denied.json()["error"]
    for headers in (user, {**user, "X-Cairn-Proxy-Secret": "guessed"}):
        refused = api.get(f"/api/v1/namespaces/{namespace}/runs", headers=headers)
        assert refused.status_code == 401 and "trusted proxy" in refused.json()["error"]
    nobody = api.get(f"/api/v1/namespaces/{namespace}/runs", headers={"X-Cairn-Proxy-Secret": "proxy-only-secret"})
    assert nobody.status_code == 401


def test_with_tenancy_the_server_reads_the_namespaces_secret_and_connects_as_its_role(
        kubectl, kube, namespace, other_namespace, postgres_url):
    url = provision_database(postgres_url, namespace, "pw-" + uuid.uuid4().hex)
    run_id = TrackingStore(url).create_run("nlp", name="tenant-run", namespace=namespace)
    kubectl.apply(credentials_secret(namespace, url, None), namespace=namespace)
    stores = TenantStores(kubernetes_secret_reader(kube))
    api = TestClient(create_app(ServerSettings(tenancy=True), stores, OpenAccess()))
    try:
        listed = api.get(f"/api/v1/namespaces/{namespace}/runs").json()["runs"]
        assert [(r["id"], r["name"]) for r in listed] == [(run_id, "tenant-run")]
        assert stores.store(namespace).engine.url.username == f"tenant_{namespace.replace('-', '_')}"
        missing = api.get(f"/api/v1/namespaces/{other_namespace}/runs")
        assert missing.status_code == 404 and other_namespace in missing.json()["error"]
    finally:
        stores.close()
