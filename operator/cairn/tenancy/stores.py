"""The stores of tenant namespaces kept open, for the operator's writes and the server's reads: one engine
with a small pool per namespace, the least recently used closed past a bound. No locking here: callers
hold their own lock around these calls."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from cairn.store import db

# At most this many idle connections, and a few more per namespace while it is busy.
MAX_TENANT_STORES = 64
TENANT_POOL_SIZE, TENANT_POOL_OVERFLOW = 1, 3

V = TypeVar("V")


def tenant_engine(url: str) -> Engine:
    """An engine for one namespace's role: a small pool, connections checked before use."""
    return create_engine(db.normalise_url(url), pool_size=TENANT_POOL_SIZE, max_overflow=TENANT_POOL_OVERFLOW,
                         pool_pre_ping=True, connect_args={"connect_timeout": 10})


class RecentTenants(Generic[V]):
    """What is kept open per namespace (a store, or a store with what it was made from), most recent last."""

    def __init__(self, engine_of: Callable[[V], Engine], max_size: int = MAX_TENANT_STORES) -> None:
        self._engine_of, self.max_size = engine_of, max_size
        self._items: OrderedDict[str, V] = OrderedDict()

    def get(self, namespace: str) -> V | None:
        """The namespace's entry, now the most recently used; None when none is open."""
        item = self._items.get(namespace)
        if item is not None:
            self._items.move_to_end(namespace)
        return item

    def put(self, namespace: str, item: V) -> None:
        """Keep ``item``; past the bound the least recently used entry's engine is closed."""
        self._items[namespace] = item
        self._items.move_to_end(namespace)
        while len(self._items) > self.max_size:
            self._engine_of(self._items.popitem(last=False)[1]).dispose()

    def close(self) -> None:
        while self._items:
            self._engine_of(self._items.popitem()[1]).dispose()
