"""Settings of ``cairn server``: where it listens, who may read what, and the stores it reads."""

from __future__ import annotations

import enum
import ipaddress
from typing import ClassVar

from pydantic import AliasChoices, Field, SecretStr, model_validator

from cairn.rundir import Env
from cairn.settings import CairnSettings


class AuthMode(enum.StrEnum):
    NONE = "none"  # one person on their own machine: only on a loopback address
    KUBERNETES = "kubernetes"  # bearer tokens checked with TokenReview, access with SubjectAccessReview
    PROXY = "proxy"  # user and groups from an authenticating proxy's headers, access with SubjectAccessReview


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerSettings(CairnSettings):
    """``cairn server``; the object store it streams artifacts from is set as for the CLI (``CAIRN_S3_*``)."""

    title: ClassVar[str] = "Server (cairn server)"

    host: str = Field("127.0.0.1", validation_alias=AliasChoices(Env.SERVER_HOST), description="Address to listen on.")
    port: int = Field(8080, ge=1, le=65535, validation_alias=AliasChoices(Env.SERVER_PORT),
                      description="Port to listen on.")
    auth: AuthMode = Field(
        AuthMode.NONE, validation_alias=AliasChoices(Env.SERVER_AUTH),
        description="Who the caller is: `none` (no identity, everyone reads everything: only allowed on a loopback "
                    "address), `kubernetes` (a bearer token checked with TokenReview), `proxy` (headers set by an "
                    "authenticating proxy that proves itself with the shared secret). Access to a namespace is "
                    "then decided by SubjectAccessReview.")
    database_url: SecretStr | None = Field(
        None, validation_alias=AliasChoices(Env.DATABASE_URL),
        description="SQLAlchemy URL of the store; unset: the local SQLite store of `cairn run`.")
    tenancy: bool = Field(
        False, validation_alias=AliasChoices(Env.TENANCY),
        description="Read each namespace with its own database role and object-store keys, from its Secret "
                    "`cairn-tenant-credentials` (the operator's `CAIRN_TENANCY`); the shared store and object store "
                    "settings are then not used.")
    cache_ttl_seconds: float = Field(10.0, ge=0, le=600, validation_alias=AliasChoices(Env.SERVER_CACHE_TTL_SECONDS),
                                     description="How long a token's identity and an access decision are reused.")
    cache_max_entries: int = Field(10_000, ge=1, le=1_000_000,
                                   validation_alias=AliasChoices(Env.SERVER_CACHE_MAX_ENTRIES),
                                   description="Most identities and decisions kept (the oldest go first).")
    proxy_user_header: str = Field("X-Forwarded-User", validation_alias=AliasChoices(Env.SERVER_PROXY_USER_HEADER),
                                   description="`auth=proxy`: header holding the user name.")
    proxy_groups_header: str = Field("X-Forwarded-Groups",
                                     validation_alias=AliasChoices(Env.SERVER_PROXY_GROUPS_HEADER),
                                     description="`auth=proxy`: header holding the groups, comma-separated.")
    proxy_secret_header: str = Field("X-Cairn-Proxy-Secret",
                                     validation_alias=AliasChoices(Env.SERVER_PROXY_SECRET_HEADER),
                                     description="`auth=proxy`: header in which the proxy sends the shared secret.")
    proxy_secret: SecretStr | None = Field(
        None, validation_alias=AliasChoices(Env.SERVER_PROXY_SECRET),
        description="`auth=proxy`: the shared secret only the proxy knows (required with `auth=proxy`); "
                    "a request without it is refused whatever user header it carries.")

    @model_validator(mode="after")
    def _auth_fits_the_address(self) -> ServerSettings:
        if self.auth == AuthMode.NONE and not is_loopback(self.host):
            raise ValueError(f"auth=none serves every run to anyone who reaches {self.host}: bind to 127.0.0.1 "
                             f"or set {Env.SERVER_AUTH} to kubernetes or proxy")
        if self.auth == AuthMode.PROXY and not self.proxy_secret:
            raise ValueError(f"auth=proxy needs {Env.SERVER_PROXY_SECRET}, the secret the proxy sends")
        return self
