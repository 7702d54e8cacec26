"""The tracking store: runs, parameters, metrics and artifacts on PostgreSQL or SQLite.

``TrackingStore`` is the one contract; what it takes and returns are the plain entities of
``cairn.store.entities`` (no SQLAlchemy object leaves the package).
"""

from cairn.store.db import StoreError
from cairn.store.registry import ModelNotFound, PromotionRefused, RegistrationRefused
from cairn.store.tracking import RunNotFound, TrackingStore

__all__ = ["ModelNotFound", "PromotionRefused", "RegistrationRefused", "RunNotFound", "StoreError", "TrackingStore"]
