"""What the training process runs on: interpreter, packages, GPUs and code version.

Captured once at ``cairn.init`` so a result can be re-run on the same stack. Every probe is
best-effort: a missing ``git`` or ``nvidia-smi`` yields empty fields, never an error.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
import urllib.parse

PROBE_TIMEOUT_S = 5


def _run(args: list[str], cwd: str | None = None) -> str | None:
    try:
        done = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def installed_packages() -> dict[str, str]:
    packages = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name] = dist.version
    return dict(sorted(packages.items(), key=lambda kv: kv[0].lower()))


def parse_nvidia_smi(csv_text: str) -> dict:
    """Parse ``nvidia-smi --query-gpu=name,driver_version --format=csv,noheader`` output."""
    names, driver = [], None
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0]:
            names.append(parts[0])
            driver = parts[1]
    return {"gpu_model": names[0] if names else None, "gpu_count": len(names), "driver_version": driver}


def gpu_info() -> dict:
    info = {"gpu_model": None, "gpu_count": 0, "driver_version": None, "cuda_version": None}
    if not shutil.which("nvidia-smi"):
        return info
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if out:
        info.update(parse_nvidia_smi(out))
    banner = _run(["nvidia-smi"]) or ""
    marker = "CUDA Version:"
    if marker in banner:
        info["cuda_version"] = banner.split(marker, 1)[1].split()[0].strip("|")
    return info


def without_credentials(url: str | None) -> str | None:
    """A remote URL without the user and password or token it may carry (``https://tok@host/x``)."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url  # also scp-like "git@host:repo", which urlsplit does not parse as a URL
    userinfo, host = parts.netloc.rsplit("@", 1)
    if parts.scheme not in ("http", "https") and ":" not in userinfo:
        return url  # "ssh://git@host/repo": an ssh user name, not a secret
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def code_version(path: str | None = None) -> dict:
    """Git commit, dirty flag, branch and remote of the repository containing ``path``."""
    cwd = path or os.getcwd()
    if not shutil.which("git"):
        return {}
    commit = _run(["git", "rev-parse", "HEAD"], cwd=cwd)
    if not commit:
        return {}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd)
    return {
        "repository": without_credentials(_run(["git", "config", "--get", "remote.origin.url"], cwd=cwd))
        or _run(["git", "rev-parse", "--show-toplevel"], cwd=cwd),
        "commit": commit,
        "branch": _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=cwd),
        "dirty": bool(status),
    }


def capture_environment() -> dict:
    env = {
        "python_version": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "packages": installed_packages(),
    }
    env.update(gpu_info())
    return env
