"""Render the settings tables of the documentation from the settings classes.

``python -m cairn.settings_docs`` rewrites every block between ``<!-- settings:NAME -->`` and
``<!-- /settings:NAME -->`` in README.md and docs/*.md (run from the repository root, or pass it);
``--check`` only says which files are stale and exits 1. A test runs the check, so a field added
or changed without regenerating fails.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pydantic_core import PydanticUndefined

from cairn.agent.prepare import PrepareSettings
from cairn.agent.sidecar import SidecarSettings
from cairn.controller.settings import OperatorSettings
from cairn.objectstore import S3Settings
from cairn.server.settings import ServerSettings
from cairn.settings import CairnSettings, accepted_values, env_names

SETTINGS: dict[str, type[CairnSettings]] = {
    "operator": OperatorSettings,
    "sidecar": SidecarSettings,
    "prepare": PrepareSettings,
    "objectstore": S3Settings,
    "server": ServerSettings,
}
BLOCK = re.compile(r"(<!-- settings:(?P<name>[a-z]+) -->\n).*?(<!-- /settings:(?P=name) -->)", re.S)


def _default(cls: type[CairnSettings], name: str) -> str:
    field = cls.model_fields[name]
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None or value in ((), {}):
        return "unset"
    return f"`{value}`" if value != "" else '`""`'


def settings_table(cls: type[CairnSettings]) -> str:
    """A Markdown table of the class's variables: name, what it accepts, default, description."""
    rows = ["| variable | accepts | default | description |", "| --- | --- | --- | --- |"]
    for name, field in cls.model_fields.items():
        variables = " or ".join(f"`{v}`" for v in env_names(cls, name))
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| {variables} | {accepted_values(field)} | {_default(cls, name)} | {description} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """``text`` with every settings block regenerated."""
    def block(m: re.Match) -> str:
        name = m.group("name")
        if name not in SETTINGS:
            raise KeyError(f"no settings class named {name!r} (known: {', '.join(SETTINGS)})")
        return f"{m.group(1)}{settings_table(SETTINGS[name])}{m.group(3)}"

    return BLOCK.sub(block, text)


def documents(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def stale_documents(root: Path) -> list[Path]:
    return [p for p in documents(root) if render(p.read_text()) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cairn.settings_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="The repository root (default: here).")
    parser.add_argument("--check", action="store_true", help="Exit 1 when a table is stale; change nothing.")
    args = parser.parse_args(argv)
    stale = stale_documents(args.root)
    if args.check:
        for path in stale:
            print(f"{path}: settings tables are stale; run python -m cairn.settings_docs", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(render(path.read_text()))
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
