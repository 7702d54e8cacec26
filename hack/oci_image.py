#!/usr/bin/env python3
"""Pack layer tarballs into an OCI image archive that `ctr images import` accepts.

The local cluster has no registry, so images are assembled here from plain tar files:
each layer is an uncompressed tar (the OCI media type for that is standard and containerd
unpacks it directly), the config and manifest are written by hand, and the archive is an
OCI image layout (oci-layout, index.json, blobs/sha256/...) in one tar. The image name goes
in the `io.containerd.image.name` annotation, which containerd's importer reads.

Usage:
    oci_image.py pack --out image.tar --name docker.io/library/cairn:dev \\
        --layer base.tar --layer app.tar --entrypoint '["/pause"]' \\
        [--cmd '[...]'] [--env K=V ...] [--workdir /] [--label k=v ...]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
# A fixed timestamp keeps the config (and so the image id) stable for identical layers.
EPOCH = "1970-01-01T00:00:00Z"


def file_digest(path: Path) -> str:
    """Return `sha256:<hex>` of a file, reading it in chunks (layers can be large)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def build_config(diff_ids: list[str], entrypoint: list[str] | None, cmd: list[str] | None,
                 env: list[str], workdir: str, labels: dict[str, str]) -> dict:
    """Return the OCI image config for uncompressed layers with the given diff ids."""
    container_config: dict = {"Env": env, "WorkingDir": workdir}
    if entrypoint is not None:
        container_config["Entrypoint"] = entrypoint
    if cmd is not None:
        container_config["Cmd"] = cmd
    if labels:
        container_config["Labels"] = labels
    return {
        "created": EPOCH,
        "architecture": "amd64",
        "os": "linux",
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": EPOCH, "created_by": "hack/oci_image.py"} for _ in diff_ids],
    }


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def pack(out: Path, names: list[str], layers: list[Path], config: dict) -> str:
    """Write the OCI archive to `out` and return the manifest digest."""
    layer_descs = []
    for layer in layers:
        digest = file_digest(layer)
        layer_descs.append({"mediaType": LAYER_MEDIA_TYPE, "digest": digest,
                            "size": layer.stat().st_size, "path": layer})
    config["rootfs"]["diff_ids"] = [d["digest"] for d in layer_descs]  # uncompressed: equal
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": [{k: v for k, v in d.items() if k != "path"} for d in layer_descs],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                },
            }
            for name in names
        ],
    }
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tar, "index.json", json.dumps(index, indent=1).encode())
        _add_bytes(tar, "blobs/sha256/" + config_digest[7:], config_bytes)
        _add_bytes(tar, "blobs/sha256/" + manifest_digest[7:], manifest_bytes)
        seen = set()
        for d in layer_descs:
            if d["digest"] in seen:
                continue
            seen.add(d["digest"])
            tar.add(str(d["path"]), arcname="blobs/sha256/" + d["digest"][7:], recursive=False)
    os.replace(tmp, out)
    return manifest_digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack layers into an OCI archive")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", action="append", required=True,
                   help="full image name, e.g. docker.io/library/cairn:dev (repeatable)")
    p.add_argument("--layer", action="append", type=Path, required=True,
                   help="uncompressed layer tar, bottom first (repeatable)")
    p.add_argument("--entrypoint", type=json.loads)
    p.add_argument("--cmd", type=json.loads)
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--workdir", default="/")
    p.add_argument("--label", action="append", default=[])
    args = parser.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label)
    config = build_config([], args.entrypoint, args.cmd, args.env, args.workdir, labels)
    digest = pack(args.out, args.name, args.layer, config)
    print(digest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
