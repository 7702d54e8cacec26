"""Operator settings, from the environment (``cairn operator`` flags set the same variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cairn.podspec import PodSettings


@dataclass(frozen=True)
class ControllerSettings:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    database_url: str | None = None
    metrics_port: int = 9090
    liveness_port: int = 8080
    pod: PodSettings = field(default_factory=PodSettings)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ControllerSettings":
        env = dict(os.environ if env is None else env)
        pod_defaults = PodSettings()
        return cls(
            namespaces=tuple(n for n in (env.get("CAIRN_NAMESPACES") or "").replace(",", " ").split() if n),
            database_url=env.get("CAIRN_DATABASE_URL") or None,
            metrics_port=int(env.get("CAIRN_METRICS_PORT") or 9090),
            liveness_port=int(env.get("CAIRN_LIVENESS_PORT") or 8080),
            pod=PodSettings(
                sidecar_image=env.get("CAIRN_SIDECAR_IMAGE") or pod_defaults.sidecar_image,
                image_pull_policy=env.get("CAIRN_IMAGE_PULL_POLICY") or None,
                database_secret=env.get("CAIRN_DATABASE_SECRET") or pod_defaults.database_secret,
                database_secret_key=env.get("CAIRN_DATABASE_SECRET_KEY") or pod_defaults.database_secret_key,
                # Set but empty: no object store at all (artifacts stay in the pod).
                objectstore_secret=env.get("CAIRN_OBJECTSTORE_SECRET", pod_defaults.objectstore_secret),
            ),
        )
