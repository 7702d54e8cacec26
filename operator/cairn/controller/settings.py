"""The operator's settings: ``CAIRN_*`` variables, or ``cairn operator`` flags given as keyword
arguments (which win): ``OperatorSettings(metrics_port=9091)``."""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from cairn.podspec import PodSettings
from cairn.rundir import Env
from cairn.settings import CairnSettings
from cairn.tenancy.naming import CREDENTIALS_SECRET, DATABASE_URL_KEY, parse_shared_prefix

PORT = {"ge": 0, "le": 65535}


class OperatorSettings(CairnSettings):
    """``cairn operator``: which namespaces to watch, the store, ports, and what shapes every pod."""

    title: ClassVar[str] = "Operator (`cairn operator`)"

    namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Namespaces to watch, separated by commas or spaces; empty: every namespace.",
        json_schema_extra={"accepts": "names separated by commas or spaces"})
    database_url: str | None = Field(
        None, repr=False, description="SQLAlchemy URL of the store (default: SQLite under `CAIRN_HOME`).")
    metrics_port: int = Field(9090, **PORT, description="Port of the operator's Prometheus metrics; 0: none.")
    liveness_port: int = Field(8080, **PORT, description="Port of Kopf's liveness probe (`/healthz`); 0: none.")
    liveness_host: str = Field("0.0.0.0", description="Address the liveness probe listens on.")
    sidecar_image: str = Field(PodSettings.sidecar_image,
                               description="Image of the tracking sidecar and the prepare step.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Pull policy of the pods' images; unset: the Kubernetes default for the tag.")
    database_secret: str = Field(PodSettings.database_secret,
                                 description="Secret in each run's namespace with the store URL for the sidecar.")
    database_secret_key: str = Field(PodSettings.database_secret_key,
                                     description="Key of that Secret holding the URL.")
    objectstore_secret: str = Field(
        PodSettings.objectstore_secret,
        description="Secret in each run's namespace with the object store (keys `endpoint`, `accessKey`, "
                    "`secretKey`, `bucket`, optional `region` and `caBundle`); set but empty: no object store.")

    tenancy: bool = Field(
        False, description="Give each namespace labelled `cairn.dev/tenant=enabled` its own database schema and role "
                           "and object-store user, in its Secret `cairn-tenant-credentials`, which the pods get "
                           "instead of the shared Secrets (PostgreSQL only). The object store's admin "
                           "credentials are the operator's `CAIRN_S3_*` variables.")
    tenant_shared_prefixes: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="With `CAIRN_TENANCY`: prefixes `s3://bucket/prefix/` every namespace may read (not write), "
                        "separated by commas or spaces.",
        json_schema_extra={"accepts": "s3:// prefixes separated by commas or spaces"})

    tenant_s3_secret: str = Field(
        "", description="With `CAIRN_TENANCY` and an object store other than the bundled MinIO (`externalS3`): the "
                        "Secret an admin puts in each tenant namespace with that namespace's `accessKey` and "
                        "`secretKey`, copied into its credentials; empty: users are made through MinIO's admin API.")

    @model_validator(mode="after")
    def _tenancy_needs_postgresql(self) -> "OperatorSettings":
        if self.tenancy and not (self.database_url or "").startswith(("postgresql", "postgres:")):
            raise ValueError(f"{Env.TENANCY} needs {Env.DATABASE_URL} to be a PostgreSQL URL")
        for uri in self.tenant_shared_prefixes:
            parse_shared_prefix(uri)
        return self

    @model_validator(mode="before")
    @classmethod
    def _empty_objectstore_secret_means_none(cls, data: Any) -> Any:
        # Empty variables count as unset everywhere else; this one, set but empty, turns the object
        # store off (the Helm chart writes it so), so it is read here before that rule drops it.
        if isinstance(data, dict) and "objectstore_secret" not in data and os.environ.get(Env.OBJECTSTORE_SECRET) == "":
            return {**data, "objectstore_secret": ""}
        return data

    @field_validator("namespaces", "tenant_shared_prefixes", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        return tuple(n for n in value if n) if isinstance(value, (list, tuple)) else value

    @property
    def pod(self) -> PodSettings:
        if self.tenancy:  # one Secret per namespace holds both the store URL and the object-store keys
            return PodSettings(sidecar_image=self.sidecar_image, image_pull_policy=self.image_pull_policy,
                               database_secret=CREDENTIALS_SECRET, database_secret_key=DATABASE_URL_KEY,
                               objectstore_secret=CREDENTIALS_SECRET)
        return PodSettings(sidecar_image=self.sidecar_image, image_pull_policy=self.image_pull_policy,
                           database_secret=self.database_secret, database_secret_key=self.database_secret_key,
                           objectstore_secret=self.objectstore_secret)
