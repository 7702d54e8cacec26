"""The Helm chart without a cluster: `helm lint`, `helm template` over value sets, the schema.

Helm itself is built from its Go module by hack/build-helm.sh (cached by version), so these tests
run the same template engine and schema validator as `helm install`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "cairn"
NS = "cairn-system"
DIGEST = "sha256:" + "ab" * 32
MIRROR = "registry.internal:5000/mirror"
# Registries an air-gapped cluster cannot reach; no rendered image may name one by default.
PUBLIC_REGISTRIES = ("docker.io", "index.docker.io", "registry-1.docker.io", "quay.io", "ghcr.io", "gcr.io",
                     "registry.k8s.io", "k8s.gcr.io", "public.ecr.aws", "mcr.microsoft.com", "nvcr.io",
                     "registry.gitlab.com", "cgr.dev")
TRAININGRUN_RULES = [
    {"apiGroups": ["cairn.dev"], "resources": ["trainingruns"],
     "verbs": ["get", "list", "watch", "patch", "delete", "create"]},
    {"apiGroups": ["cairn.dev"], "resources": ["trainingruns/status"], "verbs": ["get", "patch"]},
    {"apiGroups": ["cairn.dev"], "resources": ["models", "evaluations"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["cairn.dev"], "resources": ["models/status", "evaluations/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]
CLUSTER_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
]
NAMESPACES_RULE = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}
BUNDLED_PASSWORDS = ["postgresql.auth.password=pg-Pa55word-for-tests", "minio.auth.rootPassword=minio-Pa55word-tests"]
# `helm template` renders without a cluster: the bundled stores' passwords must be given there.
BUNDLED = ["postgresql.enabled=true", "postgresql.image.repository=postgres", "postgresql.image.tag=16-bookworm",
           "minio.enabled=true", "minio.image.repository=minio", "minio.image.tag=dev", *BUNDLED_PASSWORDS]


@pytest.fixture(scope="session")
def helm() -> Path:
    out = subprocess.run(["bash", str(REPO / "hack" / "build-helm.sh")], check=True, capture_output=True, text=True,
                         timeout=40 * 60)
    return Path(out.stdout.strip().splitlines()[-1])


def helm_run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], check=False, capture_output=True, text=True, timeout=120)


def template_args(sets: tuple[str, ...], release: str, namespace: str, extra: tuple[str, ...]) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace, *extra]
    for s in sets:
        args += ["--set", s]
    return args


def render(helm: Path, *sets: str, release: str = "cairn", namespace: str = NS,
           extra: tuple[str, ...] = ()) -> list[dict]:
    result = helm_run(helm, *template_args(sets, release, namespace, extra))
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def render_error(helm: Path, *sets: str, extra: tuple[str, ...] = ()) -> str:
    result = helm_run(helm, *template_args(sets, "cairn", NS, extra))
    assert result.returncode != 0, f"rendered although it should not:\n{result.stdout[:2000]}"
    return result.stderr


def find(objs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]


def one(objs: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> dict:
    found = find(objs, kind, name, namespace)
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}: {[o['metadata']['name'] for o in find(objs, kind)]}"
    return found[0]


def pod_specs(objs: list[dict]) -> list[dict]:
    specs = []
    for o in objs:
        if o["kind"] == "Pod":
            specs.append(o["spec"])
        elif o["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs.append(o["spec"]["template"]["spec"])
    return specs


def containers(objs: list[dict]) -> list[dict]:
    return [c for s in pod_specs(objs) for c in s.get("initContainers", []) + s["containers"]]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def operator_container(objs: list[dict]) -> dict:
    dep = one(objs, "Deployment", "cairn-operator")
    return next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")


def secret_url(secret: dict) -> str:
    return base64.b64decode(secret["data"]["url"]).decode()


# -- the chart's metadata ---------------------------------------------------------------------

def test_chart_version_follows_the_project():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["version"] == version and chart["appVersion"] == version


def test_crd_copies_are_identical_to_the_generated_crds():
    """The chart cannot read files outside itself, so it carries copies; they must not drift."""
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "files").glob("*.cairn.dev.yaml")) == generated
    for name in generated:
        assert (CHART / "files" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), \
            "run: cp crds/*.yaml charts/cairn/files/"


def test_tenancy_policy_copy_is_identical_to_the_generated_one():
    assert (CHART / "files" / "cairn-tenancy.yaml").read_bytes() == \
        (REPO / "crds" / "tenancy" / "cairn-tenancy.yaml").read_bytes(), \
        "run: cp crds/tenancy/cairn-tenancy.yaml charts/cairn/files/"


def test_every_value_is_documented_and_in_the_schema():
    """Every leaf of values.yaml has a comment above it or above its parent, and the schema knows it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict, sch: dict, path: str) -> None:
        assert sch.get("additionalProperties") is False, f"{path or 'top level'}: schema allows unknown keys"
        for key, value in node.items():
            assert key in sch["properties"], f"{path}{key} is not in values.schema.json"
            sub = sch["properties"][key]
            if isinstance(value, dict) and sub.get("properties"):
                walk(value, sub, f"{path}{key}.")
    walk(values, schema, "")

    # Keys of the first two levels carry a comment (one comment may cover a group of sibling keys
    # right below it); deeper keys are explained by their parent's comment.
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        key = re.match(r"^( {0,2})[A-Za-z_][\w-]*:", line)
        if not key:
            continue
        indent = len(key.group(1))
        j = i - 1
        while j >= 0 and lines[j].strip() and not (lines[j].lstrip().startswith("#") and
                                                     len(lines[j]) - len(lines[j].lstrip()) == indent):
            if len(lines[j]) - len(lines[j].lstrip()) < indent:
                j = -1
                break
            j -= 1
        if j < 0 or not lines[j].strip():
            undocumented.append(f"line {i + 1}: {line.strip()}")
    assert not undocumented, "values.yaml keys without a comment:\n" + "\n".join(undocumented)


# -- lint -------------------------------------------------------------------------------------

LINT_SETS = {
    "defaults": [],
    "namespaced": ["rbac.clusterWide=false", "operator.watchNamespaces={ml-a,ml-b}"],
    "bundled-stores": BUNDLED,
    "air-gapped": [f"global.imageRegistry={MIRROR}", "global.imagePullSecrets={mirror-pull}", f"image.digest={DIGEST}",
                   "networkPolicy.apiServerCIDRs={10.0.0.1/32}"],
    "existing-secret": ["externalDatabase.existingSecret=my-db", "crds.enabled=false",
                        "grafana.dashboard.enabled=false"],
}


@pytest.mark.parametrize("name", sorted(LINT_SETS))
def test_lint_is_clean(helm, name):
    args = ["lint", "--strict", str(CHART), "--namespace", NS]
    for s in LINT_SETS[name]:
        args += ["--set", s]
    result = helm_run(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


# -- defaults ---------------------------------------------------------------------------------

def test_defaults_render_the_operator_hardened_with_one_replica(helm):
    objs = render(helm, "externalDatabase.url=postgresql://cairn:pw@db.internal:5432/cairn")
    dep = one(objs, "Deployment", "cairn-operator", NS)
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "cairn-operator" and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = operator_container(objs)
    # the image of this very version, not a floating tag
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert c["image"] == f"cairn:{app_version}" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["command"] == ["cairn", "operator"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090, "healthz": 8080}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    env = env_of(c)
    assert env["CAIRN_NAMESPACES"]["value"] == ""  # every namespace
    assert env["CAIRN_SIDECAR_IMAGE"]["value"] == c["image"]
    assert env["CAIRN_DATABASE_SECRET"]["value"] == "cairn-database"
    assert env["CAIRN_METRICS_PORT"]["value"] == "9090" and env["CAIRN_LIVENESS_PORT"]["value"] == "8080"
    assert "CAIRN_IMAGE_PULL_POLICY" not in env
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9090"
    assert one(objs, "ServiceAccount", "cairn-operator", NS)
    svc = one(objs, "Service", "cairn-metrics", NS)
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert not find(objs, "ServiceMonitor") and not find(objs, "PodMonitor")
    assert {o["metadata"]["name"] for o in find(objs, "NetworkPolicy")} == {"cairn-operator", "cairn-server", "cairn-trainingruns"}
    assert not find(objs, "StatefulSet")
    for o in objs:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "cairn" and labels["app.kubernetes.io/managed-by"] == "Helm"


def test_crd_and_admission_policy_are_templated_and_kept(helm):
    objs = render(helm, "externalDatabase.url=postgresql://cairn:pw@db/cairn")
    source = [d for path in sorted((REPO / "crds").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    assert sorted(d["kind"] for d in source) == ["CustomResourceDefinition"] * 3 + [
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    for want in source:
        got = one(objs, want["kind"], want["metadata"]["name"])
        assert got["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert got["metadata"]["labels"]["app.kubernetes.io/component"] == "crds"
        assert {k: v for k, v in got.items() if k != "metadata"} == {k: v for k, v in want.items() if k != "metadata"}
    not_kept = render(helm, "externalDatabase.url=postgresql://cairn:pw@db/cairn", "crds.keep=false")
    not_kept_crds = find(not_kept, "CustomResourceDefinition")
    assert len(not_kept_crds) == 3 and all("annotations" not in crd["metadata"] for crd in not_kept_crds)
    none = render(helm, "externalDatabase.url=postgresql://cairn:pw@db/cairn", "crds.enabled=false")
    assert not find(none, "CustomResourceDefinition")
    assert not find(none, "ValidatingAdmissionPolicy", source[1]["metadata"]["name"])


def test_migrations_run_as_a_hook_before_install_and_upgrade(helm):
    objs = render(helm, "externalDatabase.url=postgresql://cairn:pw@db/cairn")
    job = one(objs, "Job", "cairn-migrate", NS)
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    hook_secret = one(objs, "Secret", "cairn-migrate", NS)
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < \
        int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert "hook-succeeded" in hook_secret["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["cairn", "db", "upgrade"]
    assert env_of(c)["CAIRN_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "cairn-migrate", "key": "url"}
    off = render(helm, "externalDatabase.url=postgresql://cairn:pw@db/cairn", "migrations.enabled=false")
    assert not find(off, "Job")


# -- RBAC -------------------------------------------------------------------------------------

def test_cluster_wide_rbac_grants_exactly_the_operators_verbs(helm):
    objs = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn")
    role = one(objs, "ClusterRole", "cairn-operator")
    assert role["rules"] == TRAININGRUN_RULES
    assert one(objs, "ClusterRole", "cairn-cluster")["rules"] == CLUSTER_RULES  # every namespace: no namespace watch
    for name in ("cairn-operator", "cairn-cluster"):
        binding = one(objs, "ClusterRoleBinding", name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cairn-operator", "namespace": NS}]
    assert not find(objs, "Role") and not find(objs, "RoleBinding")
    everything = [r for o in find(objs, "ClusterRole") + find(objs, "Role") if o["metadata"]["name"] in
                  ("cairn-operator", "cairn-cluster") for r in o["rules"]]
    for rule in everything:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert not {"secrets", "configmaps"} & set(rule["resources"])
        assert "update" not in rule["verbs"]  # Kopf and the client only PATCH


@pytest.mark.parametrize("watch, expected", [((), [NS]), (("ml-a", "ml-b"), ["ml-a", "ml-b"])])
def test_namespaced_rbac_is_a_role_per_watched_namespace(helm, watch, expected):
    sets = ["externalDatabase.url=postgresql://x:y@db/cairn", "rbac.clusterWide=false"]
    if watch:
        sets.append("operator.watchNamespaces={" + ",".join(watch) + "}")
    objs = render(helm, *sets)
    assert sorted(r["metadata"]["namespace"] for r in find(objs, "Role")) == expected
    for ns in expected:
        assert one(objs, "Role", "cairn-operator", ns)["rules"] == TRAININGRUN_RULES
        binding = one(objs, "RoleBinding", "cairn-operator", ns)
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cairn-operator", "namespace": NS}]
        assert one(objs, "Secret", "cairn-database", ns)  # the sidecars' Secret in each run namespace
    assert [r["metadata"]["name"] for r in find(objs, "ClusterRole") if "aggregate" not in str(r["metadata"])] == \
        ["cairn-cluster", "cairn-server"]  # the server's reviews are cluster-scoped in any case
    # Kopf tracks the namespaces it watches
    assert one(objs, "ClusterRole", "cairn-cluster")["rules"] == CLUSTER_RULES + [NAMESPACES_RULE]
    assert env_of(operator_container(objs))["CAIRN_NAMESPACES"]["value"] == " ".join(expected)


def test_cluster_wide_rbac_can_still_watch_chosen_namespaces(helm):
    objs = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", "operator.watchNamespaces={ml-a}")
    assert one(objs, "ClusterRole", "cairn-operator") and not find(objs, "Role")
    assert one(objs, "ClusterRole", "cairn-cluster")["rules"] == CLUSTER_RULES + [NAMESPACES_RULE]
    assert env_of(operator_container(objs))["CAIRN_NAMESPACES"]["value"] == "ml-a"
    assert one(objs, "Secret", "cairn-database", "ml-a") and not find(objs, "Secret", "cairn-database", NS)


def test_user_roles_aggregate_trainingrun_access(helm):
    objs = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn")
    edit = one(objs, "ClusterRole", "cairn-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    view = one(objs, "ClusterRole", "cairn-view")
    assert view["rules"][0]["verbs"] == ["get", "list", "watch"]
    off = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", "rbac.aggregateToDefaultRoles=false")
    assert not find(off, "ClusterRole", "cairn-edit")
    assert not find(render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", "rbac.create=false"), "ClusterRole")


# -- the database credentials -----------------------------------------------------------------

def test_database_url_is_only_in_secrets_and_reaches_pods_by_reference(helm):
    password = "s3cr3t-Pa55word-xyz"
    url = f"postgresql://cairn:{password}@db.internal:5432/cairn?sslmode=require"
    objs = render(helm, f"externalDatabase.url={url}", "operator.watchNamespaces={ml-a,ml-b}")
    b64 = base64.b64encode(url.encode()).decode()
    for o in objs:
        text = yaml.safe_dump(o)
        if o["kind"] != "Secret":
            assert password not in text and b64 not in text, f"{o['kind']} {o['metadata']['name']} holds the password"
    # the operator and the migrations read it by reference
    assert env_of(operator_container(objs))["CAIRN_DATABASE_URL"] == {
        "name": "CAIRN_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "cairn-store", "key": "url"}}}
    assert secret_url(one(objs, "Secret", "cairn-store", NS)) == url
    # the sidecar's Secret, by the name the operator is told, in every watched namespace
    assert env_of(operator_container(objs))["CAIRN_DATABASE_SECRET"]["value"] == "cairn-database"
    for ns in ("ml-a", "ml-b"):
        assert secret_url(one(objs, "Secret", "cairn-database", ns)) == url
    # the operator's own Secret is in the release namespace, apart from the sidecars'
    assert one(objs, "Secret", "cairn-store", NS)["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    assert not find(objs, "Secret", "cairn-database", NS)  # the release namespace is not watched


def test_url_is_assembled_from_parts_with_tls_mode(helm):
    objs = render(helm, "externalDatabase.host=pg.internal", "externalDatabase.password=p@ss/word",
                  "externalDatabase.sslMode=verify-full", "trainingPods.databaseSecret.name=store-url")
    assert secret_url(one(objs, "Secret", "cairn-store", NS)) == \
        "postgresql://cairn:p%40ss%2Fword@pg.internal:5432/cairn?sslmode=verify-full"
    assert secret_url(one(objs, "Secret", "store-url", NS)).endswith("sslmode=verify-full")
    assert env_of(operator_container(objs))["CAIRN_DATABASE_SECRET"]["value"] == "store-url"


def test_existing_secret_is_referenced_and_no_secret_is_written(helm):
    objs = render(helm, "externalDatabase.existingSecret=corp-db", "externalDatabase.existingSecretKey=dsn")
    assert not find(objs, "Secret")
    ref = {"secretKeyRef": {"name": "corp-db", "key": "dsn"}}
    assert env_of(operator_container(objs))["CAIRN_DATABASE_URL"]["valueFrom"] == ref
    job = one(objs, "Job", "cairn-migrate")
    assert env_of(job["spec"]["template"]["spec"]["containers"][0])["CAIRN_DATABASE_URL"]["valueFrom"] == ref


def test_without_any_database_the_render_says_what_to_set(helm):
    assert "externalDatabase: set url, host or existingSecret, or enable postgresql" in render_error(helm)


# -- images and the air gap -------------------------------------------------------------------

def test_no_image_names_a_public_registry(helm):
    for sets in ([], BUNDLED, LINT_SETS["air-gapped"]):
        objs = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", *sets)
        images = [c["image"] for c in containers(objs)]
        images.append(env_of(operator_container(objs))["CAIRN_SIDECAR_IMAGE"]["value"])
        for image in images:
            host = image.split("/")[0] if "/" in image else ""
            assert host not in PUBLIC_REGISTRIES, image
    # and no template or default value mentions one
    for path in [*CHART.rglob("*.yaml"), *CHART.rglob("*.tpl"), *CHART.rglob("*.txt"), CHART / "values.schema.json"]:
        text = path.read_text()
        for registry in PUBLIC_REGISTRIES:
            assert not re.search(rf"(?<![\w.-]){re.escape(registry)}/", text), f"{path} names {registry}"


def test_global_registry_tag_and_digest_rewrite_every_image(helm):
    objs = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", *BUNDLED, f"global.imageRegistry={MIRROR}/",
                  f"image.digest={DIGEST}", "image.tag=0.1.0", "global.imagePullSecrets={mirror-pull}",
                  extra=("--is-upgrade",))
    images = {c["name"]: c["image"] for c in containers(objs)}
    assert images["operator"] == f"{MIRROR}/cairn:0.1.0@{DIGEST}"
    assert images["db-upgrade"] == f"{MIRROR}/cairn:0.1.0@{DIGEST}"
    assert images["postgresql"] == f"{MIRROR}/postgres:16-bookworm" and images["minio"] == f"{MIRROR}/minio:dev"
    assert env_of(operator_container(objs))["CAIRN_SIDECAR_IMAGE"]["value"] == f"{MIRROR}/cairn:0.1.0@{DIGEST}"
    for spec in pod_specs(objs):
        assert spec["imagePullSecrets"] == [{"name": "mirror-pull"}]


def test_training_pods_pull_policy_reaches_the_operator(helm):
    objs = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", "image.pullPolicy=Never",
                  "trainingPods.imagePullPolicy=Never")
    c = operator_container(objs)
    assert c["imagePullPolicy"] == "Never" and env_of(c)["CAIRN_IMAGE_PULL_POLICY"]["value"] == "Never"


@pytest.mark.parametrize("component", ["postgresql", "minio"])
def test_bundled_store_without_an_image_is_refused(helm, component):
    err = render_error(helm, f"{component}.enabled=true")
    assert f"at '/{component}/image/repository': minLength: got 0, want 1" in err, err


# -- bundled stores ---------------------------------------------------------------------------

def test_bundled_postgresql_and_minio(helm):
    objs = render(helm, *BUNDLED)
    pg = one(objs, "StatefulSet", "cairn-postgresql", NS)
    assert pg["spec"]["replicas"] == 1
    assert pg["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert pg["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert one(objs, "Service", "cairn-postgresql", NS)["spec"]["ports"][0]["port"] == 5432
    pg_secret = one(objs, "Secret", "cairn-postgresql", NS)
    password = base64.b64decode(pg_secret["data"]["password"]).decode()
    assert password == "pg-Pa55word-for-tests"
    # the server's password is the one in the store URL, for the operator and for the sidecars
    operator_url = secret_url(one(objs, "Secret", "cairn-store", NS))
    assert operator_url == secret_url(one(objs, "Secret", "cairn-database", NS)) == \
        f"postgresql://cairn:{password}@cairn-postgresql.{NS}.svc:5432/cairn"
    # the stores' credentials outlive the release as their volumes do; the Secrets made from them do not
    kept = {o["metadata"]["name"] for o in find(objs, "Secret")
            if o["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep"}
    assert kept == {"cairn-postgresql", "cairn-minio"}
    minio = one(objs, "StatefulSet", "cairn-minio", NS)
    c = minio["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:3] == ["minio", "server", "/data"]
    assert base64.b64decode(one(objs, "Secret", "cairn-minio", NS)["data"]["endpoint"]).decode() == \
        f"http://cairn-minio.{NS}.svc:9000"
    # no hook on first install (the server does not exist yet): the operator migrates first
    assert not find(objs, "Job")
    init = one(objs, "Deployment", "cairn-operator")["spec"]["template"]["spec"]["initContainers"]
    assert [i["name"] for i in init] == ["db-upgrade"]
    upgrade = render(helm, *BUNDLED, extra=("--is-upgrade",))
    assert one(upgrade, "Job", "cairn-migrate")["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"


STORE_DATA = {"postgresql": ("/var/lib/postgresql/data", 999), "minio": ("/data", 1000)}


def store_init_containers(objs: list[dict], component: str) -> dict[str, dict]:
    spec = one(objs, "StatefulSet", f"cairn-{component}", NS)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["initContainers"]}


@pytest.mark.parametrize("component", sorted(STORE_DATA))
def test_bundled_stores_check_their_volume_and_chown_it_only_when_asked(helm, component):
    path, uid = STORE_DATA[component]
    check = store_init_containers(render(helm, *BUNDLED), component)
    assert list(check) == ["check-volume"]  # no root container unless the admin asks for one
    assert check["check-volume"]["securityContext"]["runAsNonRoot"] is True
    assert check["check-volume"]["command"][-2:] == [path, component]
    assert check["check-volume"]["terminationMessagePolicy"] == "FallbackToLogsOnError"
    init = store_init_containers(render(helm, *BUNDLED, f"{component}.volumePermissions.enabled=true"), component)
    assert list(init) == ["volume-permissions", "check-volume"]
    chown = init["volume-permissions"]
    assert chown["command"] == ["chown", f"{uid}:{uid}", path]
    assert chown["securityContext"]["runAsUser"] == 0
    assert chown["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert chown["volumeMounts"] == [{"name": "data", "mountPath": path}]


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the init containers' commands as the stores' users")
def test_volume_check_names_the_owner_and_the_chown_fixes_it(helm, tmp_path):
    """The rendered commands, run here as they run in the pod: root-owned data refused with its owner, then chowned."""
    init = store_init_containers(render(helm, *BUNDLED, "postgresql.volumePermissions.enabled=true"), "postgresql")
    data = Path(tempfile.mkdtemp(prefix="cairn-volume-"))  # pytest's tmp_path is closed to other users
    try:
        data.chmod(0o755)
        check = [*init["check-volume"]["command"][:-2], str(data), "postgresql"]
        refused = subprocess.run(check, capture_output=True, text=True, timeout=30, user=999, group=999)
        assert refused.returncode == 1
        assert f"{data}, the postgresql data volume, is not writable by uid 999: it is owned by uid 0 with mode 755" \
            in refused.stderr, refused.stderr
        assert "postgresql.volumePermissions.enabled=true" in refused.stderr
        chown = [*init["volume-permissions"]["command"][:-1], str(data)]
        subprocess.run(chown, check=True, timeout=30)
        assert data.stat().st_uid == 999 and data.stat().st_gid == 999
        accepted = subprocess.run(check, capture_output=True, text=True, timeout=30, user=999, group=999)
        assert accepted.returncode == 0, accepted.stderr
        assert not list(data.iterdir())  # the check leaves nothing in the server's data directory
    finally:
        shutil.rmtree(data)


@pytest.mark.parametrize("missing, value", [("postgresql.auth.password", "postgresql.auth.password"),
                                            ("minio.auth.rootPassword", "minio.auth.rootPassword")])
def test_rendering_without_a_cluster_refuses_to_generate_a_password(helm, missing, value):
    sets = [s for s in BUNDLED if not s.startswith(missing + "=")]
    err = render_error(helm, *sets)
    assert f"{value}: set it when rendering without a cluster (helm template, --dry-run, GitOps)" in err, err


@pytest.mark.parametrize("component", ["postgresql", "minio"])
def test_an_image_without_tag_or_digest_is_refused(helm, component):
    err = render_error(helm, *BUNDLED, f"{component}.image.tag=")
    assert f"{component}.image: set tag or digest; without either the image would be whatever :latest is" in err, err
    objs = render(helm, *BUNDLED, f"{component}.image.tag=", f"{component}.image.digest={DIGEST}")
    repository = {"postgresql": "postgres", "minio": "minio"}[component]
    assert {c["name"]: c["image"] for c in containers(objs)}[component] == f"{repository}@{DIGEST}"


def test_given_passwords_are_used(helm):
    objs = render(helm, *BUNDLED, "postgresql.auth.password=given", "minio.auth.rootPassword=given-too")
    assert secret_url(one(objs, "Secret", "cairn-store")).startswith("postgresql://cairn:given@")
    assert base64.b64decode(one(objs, "Secret", "cairn-minio")["data"]["rootPassword"]) == b"given-too"


def s3_settings(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_bundled_minio_settings_reach_every_run_namespace_by_reference(helm):
    objs = render(helm, *BUNDLED, "operator.watchNamespaces={ml-a,ml-b}", "minio.bucket=models")
    root_password = base64.b64decode(one(objs, "Secret", "cairn-minio", NS)["data"]["rootPassword"]).decode()
    for ns in ("ml-a", "ml-b"):
        assert s3_settings(one(objs, "Secret", "cairn-objectstore", ns)) == {
            "endpoint": f"http://cairn-minio.{NS}.svc:9000", "accessKey": "cairn", "secretKey": root_password,
            "bucket": "models"}
    assert not find(objs, "Secret", "cairn-objectstore", NS)  # the release namespace runs nothing here
    # the operator is told the Secret's name and hands it to the pods it makes; it never holds the keys
    env = env_of(operator_container(objs))
    assert env["CAIRN_OBJECTSTORE_SECRET"] == {"name": "CAIRN_OBJECTSTORE_SECRET", "value": "cairn-objectstore"}
    for o in objs:
        if o["kind"] != "Secret":
            assert root_password not in yaml.safe_dump(o), f"{o['kind']} {o['metadata']['name']} holds the key"


def test_external_s3_over_tls_with_the_sites_ca(helm, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    objs = render(helm, "externalDatabase.host=db", "externalS3.endpoint=https://s3.internal:9443",
                  "externalS3.accessKey=AK", "externalS3.secretKey=SK", "externalS3.region=site-1",
                  "trainingPods.objectStoreSecret.name=s3", extra=("--set-file", f"externalS3.caBundle={ca}"))
    assert s3_settings(one(objs, "Secret", "s3", NS)) == {
        "endpoint": "https://s3.internal:9443", "accessKey": "AK", "secretKey": "SK", "bucket": "cairn",
        "region": "site-1", "caBundle": ca.read_text()}
    assert env_of(operator_container(objs))["CAIRN_OBJECTSTORE_SECRET"]["value"] == "s3"


def test_existing_s3_secret_is_named_and_none_written(helm):
    objs = render(helm, "externalDatabase.host=db", "externalS3.existingSecret=corp-s3",
                  "externalS3.endpoint=https://ignored")
    assert env_of(operator_container(objs))["CAIRN_OBJECTSTORE_SECRET"]["value"] == "corp-s3"
    assert not [o for o in find(objs, "Secret") if "endpoint" in o.get("data", {})]


def test_without_an_object_store_runs_get_no_s3_settings(helm):
    objs = render(helm, "externalDatabase.host=db")
    assert env_of(operator_container(objs))["CAIRN_OBJECTSTORE_SECRET"]["value"] == ""
    assert not find(objs, "Secret", "cairn-objectstore")


# -- monitoring -------------------------------------------------------------------------------

def test_monitors_only_where_the_prometheus_operator_api_exists(helm):
    sets = ("externalDatabase.url=postgresql://x:y@db/cairn", "metrics.serviceMonitor.enabled=true",
            "metrics.podMonitor.enabled=true", "operator.watchNamespaces={ml-a}")
    assert not find(render(helm, *sets), "ServiceMonitor") and not find(render(helm, *sets), "PodMonitor")
    objs = render(helm, *sets, extra=("--api-versions", "monitoring.coreos.com/v1"))
    sm = one(objs, "ServiceMonitor", "cairn-operator", NS)
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"] == one(objs, "Service", "cairn-metrics")["spec"]["selector"]
    pm = one(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml-a"]}
    assert pm["spec"]["selector"]["matchExpressions"] == [{"key": "cairn.dev/trainingrun", "operator": "Exists"}]
    disabled = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn",
                      extra=("--api-versions", "monitoring.coreos.com/v1"))
    assert not find(disabled, "ServiceMonitor")


def test_grafana_dashboards_ship_as_one_config_map_each_with_series_the_code_exports(helm):
    objs = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn")
    exprs = []
    for name in ("overview", "run", "compare"):
        cm = one(objs, "ConfigMap", f"cairn-dashboard-{name}", NS)
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        dashboard = json.loads(cm["data"][f"cairn-{name}.json"])
        assert dashboard["uid"] == f"cairn-{name}"
        assert dashboard == json.loads((REPO / "charts/cairn/files/dashboards" / f"{name}.json").read_text())
        exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", m) for e in exprs for m in re.findall(r"\bcairn_\w+", e)}
    for family in ("cairn_trainingruns", "cairn_reconcile_duration_seconds", "cairn_retries", "cairn_gpu_seconds",
                   "cairn_run_metric", "cairn_run_step", "cairn_trainingrun_attempts"):
        assert family in used, family
    # every series the dashboards ask for is one the code exports
    sources = (REPO / "operator/cairn/controller/metrics.py").read_text() + \
        (REPO / "operator/cairn/agent/exporter.py").read_text()
    for family in used:
        assert f'"{family}"' in sources, f"a dashboard queries {family}, which no code exports"
    disabled = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", "grafana.dashboard.enabled=false")
    assert not [o for o in disabled if o["metadata"]["name"].startswith("cairn-dashboard")]


# -- network policies -------------------------------------------------------------------------

def test_network_policies_limit_egress(helm):
    objs = render(helm, *BUNDLED, "operator.watchNamespaces={ml-a}", "networkPolicy.apiServerCIDRs={10.96.0.1/32}")
    kube_dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    op = one(objs, "NetworkPolicy", "cairn-operator", NS)
    egress_ports = [p["port"] for rule in op["spec"]["egress"] for p in rule["ports"]]
    assert sorted(map(str, egress_ports)) == sorted(map(str, [53, 53, 443, 6443, 5432, 9000]))
    assert op["spec"]["egress"][0]["to"] == [kube_dns]  # DNS is the cluster's DNS pods, not any address
    assert op["spec"]["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}]
    assert all(rule.get("to") for rule in op["spec"]["egress"])
    runs = one(objs, "NetworkPolicy", "cairn-trainingruns", "ml-a")
    assert runs["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert sorted(p["port"] for rule in runs["spec"]["egress"] for p in rule["ports"]) == [53, 53, 5432, 9000]
    assert runs["spec"]["egress"][0]["to"] == [kube_dns]
    peers = [peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
             for rule in runs["spec"]["egress"][1:] for peer in rule["to"]]
    assert peers == ["postgresql", "minio"]
    # ingress: the metrics scraper, on the metrics port, and nothing else
    assert runs["spec"]["ingress"] == [{
        "ports": [{"port": "metrics", "protocol": "TCP"}],
        "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
    }]
    for component, port in (("postgresql", 5432), ("minio", 9000)):
        store = one(objs, "NetworkPolicy", f"cairn-{component}", NS)["spec"]
        assert store["egress"] == [] and len(store["ingress"]) == 1
        assert store["ingress"][0]["ports"] == [{"port": port, "protocol": "TCP"}]
        sources = store["ingress"][0]["from"]
        assert sources[0] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
                              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "cairn",
                                                              "app.kubernetes.io/instance": "cairn"}}}
        training = {"matchExpressions": [{"key": "cairn.dev/trainingrun", "operator": "Exists"}]}
        assert sources[1]["namespaceSelector"]["matchExpressions"][0]["values"] == ["ml-a"]
        assert sources[1]["podSelector"] == training
        assert sources[2] == {"namespaceSelector": {"matchLabels": {"cairn.dev/tenant": "enabled"}},
                              "podSelector": training}
    # an external object store without known addresses: its port, to anywhere
    external = render(helm, "externalDatabase.host=db", "externalS3.endpoint=https://s3.internal",
                      "networkPolicy.externalS3Port=443")
    rules = one(external, "NetworkPolicy", "cairn-trainingruns", NS)["spec"]["egress"]
    assert {"ports": [{"port": 443, "protocol": "TCP"}]} in rules
    custom_dns = render(helm, "externalDatabase.host=db", "networkPolicy.dnsPeers[0].ipBlock.cidr=10.0.0.10/32")
    rules = one(custom_dns, "NetworkPolicy", "cairn-trainingruns", NS)["spec"]["egress"]
    assert rules[0]["to"] == [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
    assert "/networkPolicy/dnsPeers" in render_error(helm, "externalDatabase.host=db",
                                                     extra=("--set-json", "networkPolicy.dnsPeers=[]"))
    assert not find(render(helm, "externalDatabase.host=db", "networkPolicy.enabled=false"), "NetworkPolicy")


# -- tenancy ----------------------------------------------------------------------------------

def test_tenancy_policies_are_bound_to_this_release(helm):
    objs = render(helm, "externalDatabase.url=postgresql://cairn:pw@db/cairn", "serviceAccount.name=op",
                  "externalS3.endpoint=http://s3", "externalS3.bucket=ml-data",
                  "tenancy.sharedDatasetPrefixes={s3://ml-data/shared/}",
                  "tenancy.namespaces.team-a.serviceAccounts={default,trainer}",
                  "tenancy.namespaces.team-a.priorityClasses={batch}", release="lab")
    source = {(d["kind"], d["metadata"]["name"]): d
              for d in yaml.safe_load_all((REPO / "crds" / "tenancy" / "cairn-tenancy.yaml").read_text())}
    assert len(source) == 4
    policy = one(objs, "ValidatingAdmissionPolicy", "lab-cairn-tenancy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables.pop("settings")) == {
        "bucket": "ml-data", "sharedDatasetPrefixes": "s3://ml-data/shared/",
        "serviceAccounts": "default", "serviceAccounts.team-a": "default,trainer",
        "priorityClasses": "", "priorityClasses.team-a": "batch",
        "tolerationKeys": "nvidia.com/gpu", "nodeSelectorKeys": "nvidia.com/gpu.product"}
    generated = source["ValidatingAdmissionPolicy", "tenancy.cairn.dev"]["spec"]
    assert variables == {v["name"]: v["expression"] for v in generated["variables"] if v["name"] != "settings"}
    assert policy["spec"]["validations"] == generated["validations"]
    binding = one(objs, "ValidatingAdmissionPolicyBinding", "lab-cairn-tenancy")
    assert binding["spec"] == {"policyName": "lab-cairn-tenancy", "validationActions": ["Deny"]}  # every namespace
    pods = one(objs, "ValidatingAdmissionPolicy", "lab-cairn-operator-pods")
    assert pods["spec"]["matchConditions"] == [{
        "name": "by-the-operator", "expression": f"request.userInfo.username == 'system:serviceaccount:{NS}:op'"}]
    assert one(objs, "ValidatingAdmissionPolicyBinding", "lab-cairn-operator-pods")["spec"]["policyName"] \
        == "lab-cairn-operator-pods"
    scoped = render(helm, "externalDatabase.url=postgresql://cairn:pw@db/cairn",
                    "tenancy.admission.namespaceSelector.matchLabels.team=ml")
    assert one(scoped, "ValidatingAdmissionPolicyBinding", "cairn-tenancy")["spec"]["matchResources"] == \
        {"namespaceSelector": {"matchLabels": {"team": "ml"}}}
    off = render(helm, "externalDatabase.url=postgresql://cairn:pw@db/cairn", "tenancy.admission.enabled=false")
    assert [p["metadata"]["name"] for p in find(off, "ValidatingAdmissionPolicy")] == ["trainingrun-params.cairn.dev"]
    assert not find(off, "ValidatingAdmissionPolicyBinding", "cairn-tenancy")
    assert "/tenancy/serviceAccounts/0" in render_error(helm, "externalDatabase.url=postgresql://cairn:pw@db/cairn",
                                                     "tenancy.serviceAccounts={a b}")


# -- names ------------------------------------------------------------------------------------

def test_long_release_names_still_fit(helm):
    release = "a-very-long-release-name-for-cairn-that-goes-on-and-o"  # 53 characters, Helm's limit
    objs = render(helm, *BUNDLED, release=release, extra=("--is-upgrade",))
    for o in objs:
        assert len(o["metadata"]["name"]) <= 63, o["metadata"]["name"]
        for value in o["metadata"]["labels"].values():
            assert len(value) <= 63
    for sts in find(objs, "StatefulSet"):
        assert len(sts["metadata"]["name"]) <= 52
    secrets = [(o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs if o["kind"] == "Secret"]
    assert len(secrets) == len(set(secrets))  # truncation made no two names collide


# -- the schema -------------------------------------------------------------------------------

BAD_VALUES = {  # --set values, and what the error must say
    "unknown top-level key": (["imag.tag=x"], "additional properties 'imag' not allowed"),
    "typo in a nested key": (["operator.watchNamespace={a}"],
                             "at '/operator': additional properties 'watchNamespace' not allowed"),
    "port is not a number": (["operator.metricsPort=ninety"], "at '/operator/metricsPort': got string, want integer"),
    "port out of range": (["operator.metricsPort=70000"], "at '/operator/metricsPort'"),
    "boolean as a string": (["rbac.clusterWide=yes"], "at '/rbac/clusterWide': got string, want boolean"),
    "unknown pull policy": (["image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
    "malformed digest": (["image.digest=md5:abc"], "at '/image/digest': 'md5:abc' does not match pattern"),
    "bad namespace name": (["operator.watchNamespaces={ML_Team}"], "at '/operator/watchNamespaces/0'"),
    "unknown sslMode": (["externalDatabase.sslMode=on"], "at '/externalDatabase/sslMode'"),
    "not a PostgreSQL URL": (["externalDatabase.url=mysql://x@db/cairn"], "at '/externalDatabase/url'"),
    "bad PVC size": (["postgresql.persistence.size=lots"], "at '/postgresql/persistence/size'"),
    "tag as a number": (["image.tag=16"], "at '/image/tag': got number, want string"),
    "S3 endpoint without a scheme": (["externalS3.endpoint=s3.internal:9000"], "at '/externalS3/endpoint'"),
    "bucket name S3 refuses": (["minio.bucket=My_Bucket"], "at '/minio/bucket'"),
    "CA bundle that is not PEM": (["externalS3.caBundle=/etc/ssl/ca.pem"], "at '/externalS3/caBundle'"),
    "alert duration in words": (["alerts.runStalled.for=ten minutes"], "at '/alerts/runStalled/for'"),
    "alert threshold as a string": (["alerts.gpuIdle.ratio=0.2"], "at '/alerts/gpuIdle/ratio': got string, want number"),
    "alert selector with braces": (["alerts.operatorDown.selector=up{job}"], "at '/alerts/operatorDown/selector'"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values_with_the_key_in_the_message(helm, case):
    sets, message = BAD_VALUES[case]
    err = render_error(helm, "externalDatabase.host=db", *sets)
    assert "values don't meet the specifications of the schema" in err, err
    assert message in err, err


# -- cairn server -----------------------------------------------------------------------------

def test_the_server_is_hardened_and_may_only_ask_for_reviews(helm):
    objs = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", *BUNDLED[3:6], BUNDLED_PASSWORDS[1])
    pod = one(objs, "Deployment", "cairn-server", NS)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cairn-server"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["command"] == ["cairn", "server"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/api/v1/healthz", "port": "http"}
    env = env_of(c)
    assert env["CAIRN_SERVER_AUTH"]["value"] == "kubernetes" and env["CAIRN_SERVER_HOST"]["value"] == "0.0.0.0"
    assert env["CAIRN_DATABASE_URL"] == env_of(operator_container(objs))["CAIRN_DATABASE_URL"]
    assert env["CAIRN_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "cairn-objectstore", "key": "secretKey",
                                                                       "optional": True}
    assert one(objs, "ClusterRole", "cairn-server")["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}]
    binding = one(objs, "ClusterRoleBinding", "cairn-server")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cairn-server", "namespace": NS}]
    svc = one(objs, "Service", "cairn-server", NS)
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert not find(objs, "Ingress")
    test_pod = one(objs, "Pod", "cairn-test-server", NS)
    assert test_pod["spec"]["containers"][0]["command"][-1] == "http://cairn-server.cairn-system.svc:80/api/v1/healthz"


def test_the_server_behind_an_ingress_and_a_proxy(helm):
    objs = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", "server.ingress.enabled=true",
                  "server.ingress.host=cairn.internal", "server.ingress.tlsSecret=cairn-tls", "server.auth=proxy",
                  "server.proxy.existingSecret=proxy-secret")
    ingress = one(objs, "Ingress", "cairn-server", NS)
    assert ingress["spec"]["rules"][0]["host"] == "cairn.internal"
    assert ingress["spec"]["tls"] == [{"hosts": ["cairn.internal"], "secretName": "cairn-tls"}]
    env = env_of(one(objs, "Deployment", "cairn-server")["spec"]["template"]["spec"]["containers"][0])
    assert env["CAIRN_SERVER_PROXY_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "proxy-secret", "key": "secret"}
    assert "server.proxy.existingSecret" in render_error(helm, "externalDatabase.url=postgresql://x:y@db/cairn",
                                                         "server.auth=proxy")
    assert "/server/auth" in render_error(helm, "externalDatabase.url=postgresql://x:y@db/cairn", "server.auth=none")
    off = render(helm, "externalDatabase.url=postgresql://x:y@db/cairn", "server.enabled=false")
    assert not find(off, "Deployment", "cairn-server") and not find(off, "ClusterRole", "cairn-server")


def test_the_servers_network_policy(helm):
    objs = render(helm, *BUNDLED, "networkPolicy.enabled=true", "networkPolicy.apiServerCIDRs={10.96.0.1/32}")
    policy = one(objs, "NetworkPolicy", "cairn-server", NS)["spec"]
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    egress_ports = [[p["port"] for p in rule["ports"]] for rule in policy["egress"]]
    assert egress_ports == [[53, 53], [443, 6443], [5432], [9000]]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}]


def test_tenancy_keeps_shared_credentials_out_of_run_namespaces(helm):
    objs = render(helm, *BUNDLED, "tenancy.enabled=true", "operator.watchNamespaces={team-a,team-b}",
                  "tenancy.sharedDatasetPrefixes={s3://cairn/shared/}")
    secrets = {(s["metadata"].get("namespace"), s["metadata"]["name"]) for s in find(objs, "Secret")}
    assert not {name for ns, name in secrets if ns in ("team-a", "team-b")}  # no cairn-database, no MinIO keys
    admin = one(objs, "Secret", "cairn-objectstore-admin", NS)
    assert base64.b64decode(admin["data"]["secretKey"]).decode() == "minio-Pa55word-tests"
    env = env_of(operator_container(objs))
    assert (env["CAIRN_TENANCY"]["value"], env["CAIRN_TENANT_SHARED_PREFIXES"]["value"]) == \
        ("true", "s3://cairn/shared/")
    assert env["CAIRN_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "cairn-objectstore-admin"
    assert "CAIRN_TENANT_S3_SECRET" not in env  # the bundled MinIO: the operator makes the users
    rules = one(objs, "ClusterRole", "cairn-cluster")["rules"]
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
            "resourceNames": ["cairn-tenant-credentials"]} in rules
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]} in rules

    bad = render_error(helm, *BUNDLED, "tenancy.enabled=true", "tenancy.sharedDatasetPrefixes={s3://cairn/*}")
    assert "/tenancy/sharedDatasetPrefixes/0" in bad


def test_with_tenancy_the_server_reads_tenant_secrets_only_and_holds_no_shared_credentials(helm):
    objs = render(helm, *BUNDLED, "tenancy.enabled=true")
    env = env_of(one(objs, "Deployment", "cairn-server", NS)["spec"]["template"]["spec"]["containers"][0])
    assert env["CAIRN_TENANCY"] == {"name": "CAIRN_TENANCY", "value": "true"}
    assert not {name for name in env if name == "CAIRN_DATABASE_URL" or name.startswith("CAIRN_S3_")}
    assert one(objs, "ClusterRole", "cairn-server")["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["cairn-tenant-credentials"], "verbs": ["get"]}]
    shared = render(helm, *BUNDLED)
    shared_env = env_of(one(shared, "Deployment", "cairn-server", NS)["spec"]["template"]["spec"]["containers"][0])
    assert "CAIRN_TENANCY" not in shared_env and "CAIRN_DATABASE_URL" in shared_env
