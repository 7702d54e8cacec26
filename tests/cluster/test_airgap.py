"""The air-gap bundle (hack/airgap-bundle.sh) and the commands of docs/airgap.md against it.

One bundle per module, built into a temporary directory (the images are built by the same scripts
as the cluster tests' images, with --no-import: no cluster is needed, but root and debootstrap
are; warm, the module takes about 30 s). The checks: the file holds the chart, every CRD, the
three OCI archives and the SDK/CLI wheels (enough for pip with no index); SHA256SUMS verifies and catches a flipped byte; images.txt says what each
archive holds.
Then the docs' shell blocks from "Set the names once" on run in the unpacked bundle, with
stand-ins for skopeo, ctr, kubectl and `helm install/upgrade/test` that record their arguments;
every install and upgrade they ask for is rendered with the real Helm, and every image the chart
would pull must be one the docs pushed to the mirror (or imported into the nodes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "airgap.md"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
ARCHIVES = ("cairn.oci.tar", "cairn-minio.oci.tar", "cairn-postgres.oci.tar")
MIRROR = "registry.example.internal/cairn"  # the docs' MIRROR
BUNDLE_TIMEOUT_S = 60 * 60  # a cold machine builds Helm, MinIO and three images first
FAKE_TOOL = """#!/usr/bin/env bash
# Records its arguments (one JSON list per line); `helm template` is passed to the real Helm.
if [[ "$(basename "$0")" == helm && "${1:-}" == template ]]; then exec "$REAL_HELM" "$@"; fi
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >>"$CALLS/$(basename "$0").jsonl"
"""


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    out = subprocess.run(["bash", str(REPO / "hack" / "build-helm.sh")], check=True, capture_output=True,
                         text=True, timeout=40 * 60)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, str]:
    """(the bundle file, what the script printed on stdout)."""
    out = tmp_path_factory.mktemp("airgap") / "cairn-airgap.tar"
    result = subprocess.run(["bash", str(REPO / "hack" / "airgap-bundle.sh"), str(out)], check=False,
                            capture_output=True, text=True, timeout=BUNDLE_TIMEOUT_S)
    assert result.returncode == 0, f"airgap-bundle.sh failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return out, result.stdout


@pytest.fixture(scope="module")
def unpacked(bundle, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("site") / "cairn-airgap"
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(bundle[0]), "-C", str(dest)], check=True, timeout=300)
    return dest


@pytest.fixture(scope="module")
def images_txt(unpacked) -> list[tuple[str, str, str, str]]:
    lines = (unpacked / "images.txt").read_text().splitlines()
    rows = [tuple(line.split("\t")) for line in lines]
    assert rows and all(len(r) == 4 for r in rows), lines
    return rows


def oci_index(archive: Path) -> tuple[dict, dict[str, bytes]]:
    """The archive's index.json and its manifest blobs by digest."""
    with tarfile.open(archive) as t:
        index = json.load(t.extractfile("index.json"))
        blobs = {m["digest"]: t.extractfile("blobs/sha256/" + m["digest"].removeprefix("sha256:")).read()
                 for m in index["manifests"]}
    return index, blobs


def test_the_script_prints_only_the_bundle_path(bundle):
    path, stdout = bundle
    assert stdout == f"{path}\n"
    assert not Path(f"{path}.partial").exists()


def test_the_bundle_checksum_verifies_where_the_site_carries_it(bundle, tmp_path):
    path, _ = bundle
    carried = tmp_path / "usb"
    carried.mkdir()
    shutil.copy(path, carried / path.name)
    shutil.copy(f"{path}.sha256", carried / f"{path.name}.sha256")
    ok = subprocess.run(["sha256sum", "-c", f"{path.name}.sha256"], cwd=carried, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout == f"{path.name}: OK\n"


def test_bundle_holds_the_chart_every_crd_and_every_image(bundle, unpacked):
    with tarfile.open(bundle[0]) as t:
        members = {m.name.removeprefix("./") for m in t.getmembers() if m.isfile()}
        assert all(m.uid == 0 and m.gid == 0 for m in t.getmembers())
        assert t.getmember(".").mode == 0o755  # the top directory, as unpacked at the site
    crds = sorted(str(p.relative_to(REPO / "crds")) for p in (REPO / "crds").rglob("*.yaml"))
    assert crds
    wheels = {m for m in members if m.startswith("wheels/")}
    assert f"wheels/cairn_tracking-{VERSION}-py3-none-any.whl" in wheels
    assert members - wheels == {f"chart/cairn-{VERSION}.tgz", "images.txt", "SHA256SUMS",
                                *(f"crds/{c}" for c in crds), *(f"images/{a}" for a in ARCHIVES)}
    for crd in crds:
        assert (unpacked / "crds" / crd).read_bytes() == (REPO / "crds" / crd).read_bytes()
    with tarfile.open(unpacked / "chart" / f"cairn-{VERSION}.tgz") as chart:
        meta = yaml.safe_load(chart.extractfile("cairn/Chart.yaml"))
        assert (meta["name"], meta["version"]) == ("cairn", VERSION)
        assert chart.extractfile("cairn/values.schema.json")
    for archive in ARCHIVES:
        with tarfile.open(unpacked / "images" / archive) as t:
            assert json.load(t.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}


def test_the_bundles_wheels_alone_install_the_cli(unpacked, tmp_path):
    """pip with no index, as inside the site: every requirement of `cairn-tracking[cli]` is in wheels/."""
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    result = subprocess.run(["python3", "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--dry-run",
                             "--no-index", "--find-links", str(unpacked / "wheels"), "cairn-tracking[cli]"],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    (would_install,) = [line for line in result.stdout.splitlines() if line.startswith("Would install ")]
    names = {name.lower().replace("_", "-") for name in would_install.split()[2:]}  # pip may print either spelling
    assert {f"cairn-tracking-{VERSION}", "click", "sqlalchemy"} <= names | {name.rsplit("-", 1)[0] for name in names}


def test_sha256sums_cover_every_file_and_catch_a_flipped_byte(unpacked):
    listed = [line.split("  ", 1)[1] for line in (unpacked / "SHA256SUMS").read_text().splitlines()]
    files = sorted(str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file())
    assert sorted(listed) == [f for f in files if f != "SHA256SUMS"]
    ok = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=unpacked, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK\n") == len(listed)

    victim = unpacked / "images" / "cairn-minio.oci.tar"
    offset = victim.stat().st_size // 2
    with victim.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    try:
        bad = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=unpacked, capture_output=True, text=True)
    finally:
        with victim.open("r+b") as f:
            f.seek(offset)
            f.write(byte)
    assert bad.returncode == 1
    assert "images/cairn-minio.oci.tar: FAILED" in bad.stdout
    assert "1 computed checksum did NOT match" in bad.stderr
    assert bad.stdout.count(": OK\n") == len(listed) - 1


def test_images_txt_matches_each_archive(unpacked, images_txt):
    by_archive: dict[str, set] = {}
    for archive, tag, digest, name in images_txt:
        by_archive.setdefault(archive, set()).add((tag, digest, name))
    assert sorted(by_archive) == sorted(f"images/{a}" for a in ARCHIVES)
    for archive, rows in by_archive.items():
        index, blobs = oci_index(unpacked / archive)
        assert rows == {(m["annotations"]["org.opencontainers.image.ref.name"], m["digest"],
                         m["annotations"]["io.containerd.image.name"]) for m in index["manifests"]}
        for digest, blob in blobs.items():  # the digest is the manifest's content
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == digest
    tags = {(a, t) for a, t, _, _ in images_txt}
    assert ("images/cairn.oci.tar", VERSION) in tags and ("images/cairn-postgres.oci.tar", "15") in tags


# -- the docs' commands ---------------------------------------------------------------------------

def doc_site_blocks() -> list[str]:
    """The docs' sh blocks that run inside the unpacked bundle: every one after the block that
    verifies SHA256SUMS."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", DOC.read_text(), flags=re.S | re.M)
    start = next(i for i, b in enumerate(blocks) if "sha256sum -c SHA256SUMS" in b)
    return blocks[start + 1:]


@pytest.fixture(scope="module")
def site_run(unpacked, helm_bin, tmp_path_factory) -> tuple[dict[str, list[list[str]]], str]:
    """Run the docs' site blocks in the bundle; return each stand-in tool's recorded calls, and
    what the blocks printed."""
    work = tmp_path_factory.mktemp("docs")
    bin_dir, calls = work / "bin", work / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    for tool in ("skopeo", "ctr", "kubectl", "helm"):
        (bin_dir / tool).write_text(FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    script = "set -euo pipefail\n" + "\n".join(doc_site_blocks())
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "REAL_HELM": str(helm_bin)}
    result = subprocess.run(["bash", "-c", script], cwd=unpacked, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"the docs' commands failed:\n{result.stderr}{result.stdout}"
    recorded = {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in calls.glob("*.jsonl")}
    return recorded, result.stdout


def render(helm: Path, cwd: Path, args: list[str]) -> list[dict]:
    """Render what a recorded `helm install/upgrade` would apply (hooks and tests included)."""
    verb, *rest = args
    assert verb in ("install", "upgrade"), args
    rest = [a for a in rest if a not in ("--wait", "--create-namespace")]
    extra = ["--is-upgrade"] if verb == "upgrade" else []
    # Offline, the chart refuses to generate the bundled stores' passwords; the install would make them.
    extra += ["--set", "postgresql.auth.password=rendered", "--set", "minio.auth.rootPassword=rendered"]
    result = subprocess.run([str(helm), "template", *rest, *extra], cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def pulled_images(objs: list[dict]) -> list[tuple[str, str]]:
    """(image, pull policy) of every container, plus the tracking sidecars' image."""
    out = []
    for o in objs:
        if o["kind"] == "Pod":
            spec = o["spec"]
        elif o["kind"] in ("Deployment", "StatefulSet", "Job"):
            spec = o["spec"]["template"]["spec"]
        else:
            continue
        for c in spec.get("initContainers", []) + spec["containers"]:
            out.append((c["image"], c.get("imagePullPolicy", "")))
            for e in c.get("env", []):
                if e["name"] == "CAIRN_SIDECAR_IMAGE":
                    policy = next((x.get("value", "") for x in c["env"] if x["name"] == "CAIRN_IMAGE_PULL_POLICY"),
                                  "")
                    out.append((e["value"], policy))
    return out


def split_ref(ref: str) -> tuple[str, str]:
    """"name:tag@digest" -> ("name:tag", "digest" or "")."""
    name, _, digest = ref.partition("@")
    return name, digest


def containerd_name(ref: str) -> str:
    """The name containerd resolves a pod's image to (a short name is on docker.io)."""
    first = ref.split("/", 1)[0]
    if "/" not in ref or not ("." in first or ":" in first or first == "localhost"):
        ref = "docker.io/" + (ref if "/" in ref else "library/" + ref)
    return ref


def test_docs_push_every_tag_of_every_archive_to_the_mirror(site_run, unpacked, images_txt):
    copies = [c for c in site_run[0]["skopeo"] if c[0] == "copy"]
    assert all("--preserve-digests" in c for c in copies), copies
    pushed = {(c[-2], c[-1]) for c in copies}
    expected = {(f"oci-archive:{a}:{t}", f"docker://{MIRROR}/{Path(a).name.removesuffix('.oci.tar')}:{t}")
                for a, t, _, _ in images_txt}
    assert pushed == expected
    for archive, tag, _, _ in images_txt:  # the tag selects an image inside the archive
        index, _ = oci_index(unpacked / archive)
        assert tag in [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]


def test_every_image_the_installed_chart_pulls_was_pushed_by_digest(site_run, unpacked, images_txt, helm_bin):
    calls, stdout = site_run
    digest_of = {f"{MIRROR}/{Path(a).name.removesuffix('.oci.tar')}:{t}": d for a, t, d, _ in images_txt}
    minio = next(n for n in digest_of if "/cairn-minio:" in n)
    installs = [c for c in calls["helm"] if c[0] in ("install", "upgrade")]
    assert [c[0] for c in installs] == ["install", "install", "upgrade"], installs
    rendered = []
    for args in installs:
        assert "airgap-values.yaml" in args
        objs = render(helm_bin, unpacked, args)
        rendered.append(objs)
        images = pulled_images(objs)
        assert {split_ref(ref)[0] for ref, _ in images} == \
            {f"{MIRROR}/cairn:{VERSION}", f"{MIRROR}/cairn-postgres:15", minio}, images
        for ref, _ in images:
            name, digest = split_ref(ref)
            assert name in digest_of, f"{ref}: not pushed to the mirror by the docs"
            assert digest == digest_of[name], f"{ref}: not pinned to the bundle's digest"
    # the first install brings the CRD, the one with crds.enabled=false does not (kubectl applies it)
    assert [any(o["kind"] == "CustomResourceDefinition" for o in objs) for objs in rendered[:2]] == [True, False]
    assert "crds.enabled=false" in installs[1]
    assert ["apply", "-f", "crds/trainingruns.cairn.dev.yaml"] in calls["kubectl"]
    # the docs' preview (`helm template ... | grep 'image: ' | sort -u`) lists exactly these images
    preview = {line.strip().removeprefix("image: ") for line in stdout.splitlines() if "image: " in line}
    assert preview == {ref for ref, _ in pulled_images(rendered[0])}


def test_node_import_values_name_the_imported_images(site_run, unpacked, images_txt, helm_bin):
    calls, _ = site_run
    imports = [c for c in calls["ctr"] if c[:3] == ["-n", "k8s.io", "images"]]
    assert sorted(c[-1] for c in imports) == sorted(f"images/{a}" for a in ARCHIVES)
    imported = {name for _, _, _, name in images_txt}
    install = next(c for c in calls["helm"] if c[0] == "install")
    args = [("node-values.yaml" if a == "airgap-values.yaml" else a) for a in install]
    images = pulled_images(render(helm_bin, unpacked, args))
    assert len({ref for ref, _ in images}) == 3, images
    for ref, policy in images:
        assert containerd_name(ref) in imported, f"{ref}: not imported by the docs' ctr command"
        assert policy == "Never", (ref, policy)
