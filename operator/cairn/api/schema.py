"""Dataclass fields that carry their own OpenAPI schema, so types, docs and CRD stay one thing."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

Scalar = typing.Union[str, int, float, bool]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def field(description: str, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
          required: bool = False, **schema: Any) -> Any:
    """A dataclass field with its description and schema keywords (minimum, pattern, enum, ...).

    ``schema`` may hold ``validations`` (CEL rules) and ``items`` / ``values`` (keywords for list
    items or map values); everything else is copied into the field's OpenAPI schema.
    """
    meta = {"description": description, "required": required, "schema": schema}
    if default is not dataclasses.MISSING:
        return dataclasses.field(default=default, metadata=meta)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if required:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=None, metadata=meta)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        return typing.Union[tuple(args)]
    return tp


def type_schema(tp: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """OpenAPI v3 schema (structural, as the API server wants it) for a Python type."""
    tp = _strip_optional(tp)
    extra = dict(extra or {})
    origin = typing.get_origin(tp)
    if tp == Scalar:
        # string-or-number-or-bool is not expressible structurally, and CEL rules in the CRD cannot
        # see untyped values: cairn.api.crd.params_policy checks them at admission instead.
        out: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
    elif tp is bool:
        out = {"type": "boolean"}
    elif tp is int:
        out = {"type": "integer", "format": "int64"}
    elif tp is float:
        out = {"type": "number"}
    elif tp is str:
        out = {"type": "string"}
    elif origin is list:
        (item,) = typing.get_args(tp)
        out = {"type": "array", "items": type_schema(item, extra.pop("items", None))}
    elif origin is dict:
        _, value = typing.get_args(tp)
        out = {"type": "object", "additionalProperties": type_schema(value, extra.pop("values", None))}
    elif tp is dict or tp is Any:
        out = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    elif dataclasses.is_dataclass(tp):
        out = object_schema(tp)
    else:
        raise TypeError(f"no schema for {tp!r}")
    validations = extra.pop("validations", None)
    out.update(extra)
    if validations:
        out["x-kubernetes-validations"] = list(out.get("x-kubernetes-validations", [])) + list(validations)
    return out


def object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        schema = type_schema(hints[f.name], meta.get("schema"))
        schema["description"] = meta["description"]
        if f.default is not dataclasses.MISSING and f.default is not None:
            schema.setdefault("default", f.default)
        elif dataclasses.is_dataclass(f.default_factory):
            schema.setdefault("default", {})  # so the API server fills in the nested defaults too
        props[camel(f.name)] = _ordered(schema)
        if meta.get("required"):
            required.append(camel(f.name))
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    doc = (cls.__doc__ or "").strip()
    if doc:
        out["description"] = " ".join(doc.split())
    rules = getattr(cls, "__validations__", None)
    if rules:
        out["x-kubernetes-validations"] = list(rules)
    return out


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    first = [k for k in ("description", "type", "format") if k in schema]
    return {**{k: schema[k] for k in first}, **{k: v for k, v in schema.items() if k not in first}}


def from_dict(cls: type, data: Mapping[str, Any] | None) -> Any:
    """Build ``cls`` from a Kubernetes-style dict (camelCase keys), filling in the defaults."""
    data = data or {}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = camel(f.name)
        if key not in data or data[key] is None:
            continue
        kwargs[f.name] = _convert(hints[f.name], data[key])
    return cls(**kwargs)


def _convert(tp: Any, value: Any) -> Any:
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_convert(item, v) for v in value]
    if origin is dict:
        _, val = typing.get_args(tp)
        return {k: _convert(val, v) for k, v in value.items()}
    return value


def to_dict(obj: Any) -> Any:
    """The Kubernetes-style dict of a dataclass value (camelCase keys, ``None`` left out)."""
    if dataclasses.is_dataclass(obj):
        return {camel(f.name): to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) is not None}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
