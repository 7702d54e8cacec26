"""Who is calling and what they may read: Kubernetes decides, the server only asks.

``Access.identify`` turns a request's headers into an ``Identity`` (or ``Unauthenticated``, a 401);
``Access.allowed`` asks whether that identity may ``get``/``list`` TrainingRuns in a namespace (a
SubjectAccessReview). Both answers are cached for a few seconds in a bounded cache, so a page that makes
twenty calls costs the API server one review of each kind.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Generic, Mapping, Protocol, TypeVar

from cairn.api import GROUP, PLURAL
from cairn.server.settings import AuthMode, ServerSettings

K = TypeVar("K")
V = TypeVar("V")


class Unauthenticated(Exception):
    """No identity could be established; the message says why (never echoing the token)."""


class AccessUnavailable(Exception):
    """The API server could not be asked; the caller gets 503, not a wrong decision."""


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


class Access(Protocol):
    mode: AuthMode

    def identify(self, headers: Mapping[str, str]) -> Identity: ...

    def allowed(self, identity: Identity, namespace: str, verb: str) -> bool: ...


class TtlCache(Generic[K, V]):
    """At most ``max_entries`` values, each kept ``ttl`` seconds; the oldest entry goes first when full."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_entries, self.clock = ttl, max_entries, clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (self.clock() + self.ttl, value)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def bearer_token(headers: Mapping[str, str]) -> str:
    value = headers.get("authorization")
    if not value:
        raise Unauthenticated("no bearer token: send Authorization: Bearer <token>")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header is not 'Bearer <token>'")
    return token.strip()


class OpenAccess:
    """``auth=none``: one person on a loopback address reads everything."""

    mode = AuthMode.NONE

    def identify(self, headers: Mapping[str, str]) -> Identity:
        return Identity("local")

    def allowed(self, identity: Identity, namespace: str, verb: str) -> bool:
        return True


class KubernetesReviews:
    """The two review calls, through the ``kubernetes`` client (in-cluster config or the kubeconfig)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._client = client
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)

    def review_token(self, token: str) -> Identity | None:
        c = self._client
        try:
            review = self._authn.create_token_review(c.V1TokenReview(spec=c.V1TokenReviewSpec(token=token)))
        except c.ApiException as exc:
            raise AccessUnavailable(f"TokenReview failed: {exc.status} {exc.reason}") from None
        except Exception as exc:  # the API server is away: connection refused, timeouts
            raise AccessUnavailable(f"TokenReview failed: {type(exc).__name__}") from None
        status = review.status
        if not status or not status.authenticated or not status.user:
            return None
        user = status.user
        extra = tuple(sorted((k, tuple(v)) for k, v in (user.extra or {}).items()))
        return Identity(user.username or "", tuple(user.groups or ()), user.uid or "", extra)

    def review_access(self, identity: Identity, namespace: str, verb: str) -> bool:
        c = self._client
        spec = c.V1SubjectAccessReviewSpec(
            user=identity.user, groups=list(identity.groups), uid=identity.uid or None,
            extra={k: list(v) for k, v in identity.extra} or None,
            resource_attributes=c.V1ResourceAttributes(group=GROUP, resource=PLURAL, verb=verb,
                                                       namespace=namespace))
        try:
            review = self._authz.create_subject_access_review(c.V1SubjectAccessReview(spec=spec))
        except c.ApiException as exc:
            raise AccessUnavailable(f"SubjectAccessReview failed: {exc.status} {exc.reason}") from None
        except Exception as exc:
            raise AccessUnavailable(f"SubjectAccessReview failed: {type(exc).__name__}") from None
        return bool(review.status and review.status.allowed)


class ReviewedAccess:
    """``auth=kubernetes`` and ``auth=proxy``: identity from a token or the proxy's headers, access from
    SubjectAccessReview; both cached."""

    def __init__(self, settings: ServerSettings, reviews: KubernetesReviews,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = settings.auth
        self.settings = settings
        self.reviews = reviews
        self.identities: TtlCache[str, Identity] = TtlCache(settings.cache_ttl_seconds, settings.cache_max_entries,
                                                            clock)
        self.decisions: TtlCache[tuple[Identity, str, str], bool] = TtlCache(
            settings.cache_ttl_seconds, settings.cache_max_entries, clock)

    def identify(self, headers: Mapping[str, str]) -> Identity:
        if self.mode == AuthMode.PROXY:
            return self._proxy_identity(headers)
        token = bearer_token(headers)
        # Keyed by the token's digest: the cache never holds a usable credential.
        key = hashlib.sha256(token.encode()).hexdigest()
        identity = self.identities.get(key)
        if identity is None:
            identity = self.reviews.review_token(token)
            if identity is None:
                raise Unauthenticated("the token is not valid (unknown, expired or revoked)")
            self.identities.put(key, identity)
        return identity

    def _proxy_identity(self, headers: Mapping[str, str]) -> Identity:
        secret = self.settings.proxy_secret.get_secret_value() if self.settings.proxy_secret else ""
        sent = headers.get(self.settings.proxy_secret_header.lower(), "")
        if not secret or not hmac.compare_digest(sent.encode(), secret.encode()):
            raise Unauthenticated("the request did not come through the trusted proxy")
        user = headers.get(self.settings.proxy_user_header.lower(), "").strip()
        if not user:
            raise Unauthenticated(f"the proxy sent no user ({self.settings.proxy_user_header})")
        groups = headers.get(self.settings.proxy_groups_header.lower(), "")
        return Identity(user, tuple(g.strip() for g in groups.split(",") if g.strip()))

    def allowed(self, identity: Identity, namespace: str, verb: str) -> bool:
        key = (identity, namespace, verb)
        decision = self.decisions.get(key)
        if decision is None:
            decision = self.reviews.review_access(identity, namespace, verb)
            self.decisions.put(key, decision)
        return decision


def access_for(settings: ServerSettings, api_client: Any = None) -> Access:
    """The access policy ``settings.auth`` names; ``api_client`` defaults to in-cluster config, else the
    kubeconfig."""
    if settings.auth == AuthMode.NONE:
        return OpenAccess()
    return ReviewedAccess(settings, KubernetesReviews(api_client or kubernetes_api_client()))


def kubernetes_api_client() -> Any:  # noqa: ANN401 - a kubernetes.client.ApiClient
    """In-cluster config, else the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()
