"""What the operator recorded about a run wins over what the run's code logs. Pure; no I/O.

The manifest's parameters (``spec.params``, which reach the sidecar as ``CAIRN_PARAMS``; in local mode
the ``--param`` values) and the tags the operator and local mode record (``kubernetes.*``, ``cairn.*``)
are facts about the run that the trainer must not rewrite. A ``run``/``params``/``tags`` record that
disagrees keeps the recorded value; the trainer's value is stored beside it under ``code.<key>``
(a param or a tag), where ``cairn runs show`` shows it.
"""

from __future__ import annotations

from typing import Any, Mapping

from cairn.store.entities import IngestBatch

CODE_PREFIX = "code."
RESERVED_TAG_PREFIXES = ("kubernetes.", "cairn.")


def is_reserved_tag(key: str) -> bool:
    return key.startswith(RESERVED_TAG_PREFIXES)


def same_value(a: Any, b: Any) -> bool:
    """Equal as parameters: ``1 == 1.0`` is, ``True == 1`` is not."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _params(logged: Mapping[str, Any], manifest: Mapping[str, Any], overridden: list[str]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in logged.items():
        if key not in manifest:
            kept[key] = value
            continue
        kept[key] = manifest[key]  # as given, even where the code's value is equal (3.0 for 3)
        if not same_value(value, manifest[key]):
            kept[CODE_PREFIX + key] = value
            overridden.append(key)
    return kept


def _tags(logged: Mapping[str, str], overridden: list[str]) -> dict[str, str]:
    kept: dict[str, str] = {}
    for key, value in logged.items():
        if is_reserved_tag(key):
            kept[CODE_PREFIX + key] = value
            overridden.append(key)
        else:
            kept[key] = value
    return kept


def keep_recorded_facts(batch: IngestBatch, manifest_params: Mapping[str, Any]) -> list[str]:
    """Rewrite ``batch``'s params and tags (the ``run`` record's too) so that none replaces a manifest
    parameter with another value or sets a reserved tag; returns the keys moved under ``code.``."""
    overridden: list[str] = []
    batch.params = _params(batch.params, manifest_params, overridden)
    batch.tags = _tags(batch.tags, overridden)
    info = batch.run_info
    if info is not None:
        info = dict(info)
        if isinstance(info.get("params"), dict):
            info["params"] = _params(info["params"], manifest_params, overridden)
        if isinstance(info.get("tags"), dict):
            info["tags"] = _tags(info["tags"], overridden)
        batch.run_info = info
    return overridden
