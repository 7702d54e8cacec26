"""What every process's settings class shares: the ``CAIRN_`` prefix, validation at start, and one
line that says what is wrong.

Each process has one class (``OperatorSettings``, ``SidecarSettings``, ``PrepareSettings``,
``S3Settings``) built once when it starts and passed down. A wrong value stops the start with
:class:`SettingsError`, whose message is one line such as
``CAIRN_METRICS_PORT: expected an integer from 0 to 65535, got 'abc'``; the ``cairn`` command
prints it and exits 2. ``python -m cairn.settings_docs`` renders the same fields into the
settings tables of the documentation. The SDK (training side) reads its few variables with the
standard library instead.
"""

from __future__ import annotations

import enum
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import annotated_types
from pydantic import AliasChoices, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CAIRN_"


class SettingsError(ValueError):
    """A setting has a value the process cannot start with; the message is one line."""


class CairnSettings(BaseSettings):
    """Base of the per-process settings: ``CAIRN_<FIELD>`` variables, keyword arguments (command-line
    flags) winning over them, empty variables counting as unset, and one-line errors."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True,
                                      populate_by_name=True)
    title: ClassVar[str] = ""  # the heading of its table in the documentation

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(type(self), exc)) from None


def reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


# -- what a field is called and accepts: shared by error messages and the generated tables ---------
def env_names(cls: type[BaseSettings], name: str) -> list[str]:
    """The variables that set field ``name``, in the order they are looked up."""
    alias = cls.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    if isinstance(alias, str):
        return [alias]
    return [f"{cls.model_config.get('env_prefix', '')}{name}".upper()]


def _field_for_loc(cls: type[BaseSettings], loc: str) -> str | None:
    for name in cls.model_fields:
        if loc == name or loc in env_names(cls, name):
            return name
    return None


def _plain_type(annotation: Any) -> Any:
    """``X | None`` → ``X``; ``Annotated[X, ...]`` → ``X``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


def _bounds(field: FieldInfo) -> str:
    lo = hi = None
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = f"from {m.ge}"
        elif isinstance(m, annotated_types.Gt):
            lo = f"above {m.gt}"
        elif isinstance(m, annotated_types.Le):
            hi = f"to {m.le}" if lo and lo.startswith("from") else f"up to {m.le}"
        elif isinstance(m, annotated_types.Lt):
            hi = f"below {m.lt}"
    if lo and lo.startswith("from") and not hi:
        lo = f"of at least {lo[5:]}"
    return " ".join(p for p in (lo, hi) if p)


def accepted_values(field: FieldInfo) -> str:
    """What a field accepts, in words: ``an integer from 0 to 65535``, ``one of Always, Never``."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("accepts"), str):
        return extra["accepts"]
    tp = _plain_type(field.annotation)
    bounds = _bounds(field)
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return f"an integer {bounds}".strip()
    if tp is float:
        return f"a number {bounds}".strip()
    if tp is Path:
        return "a path"
    if tp is SecretStr:
        return "text (secret)"
    return "text"


def is_secret(field: FieldInfo) -> bool:
    return _plain_type(field.annotation) is SecretStr or field.repr is False


def describe_validation_error(cls: type[BaseSettings], exc: ValidationError) -> str:
    """One line naming each wrong variable and what it accepts (secret values are not repeated)."""
    parts: list[str] = []
    for err in exc.errors():
        name = _field_for_loc(cls, str(err["loc"][0])) if err["loc"] else None
        if name is None:
            parts.append(f"{err['loc'][0]}: not a setting" if err["type"] == "extra_forbidden" else err["msg"])
            continue
        field = cls.model_fields[name]
        first, *others = env_names(cls, name)
        var = f"{first} (or {', '.join(others)})" if others else first
        if err["type"] == "missing":
            parts.append(f"{var}: required, but not set")
            continue
        got = "a value not shown here (secret)" if is_secret(field) else repr(err["input"])
        parts.append(f"{var}: expected {accepted_values(field)}, got {got}")
    return "; ".join(dict.fromkeys(parts))
