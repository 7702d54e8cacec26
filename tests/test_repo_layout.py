"""The repository's shape that no import error would reveal: tests share helpers only through
tests/support, examples import no test code, and no test, example or benchmark edits sys.path."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_test_modules_import_no_other_test_module():
    offenders = {
        f"{path.relative_to(REPO)}: {name}"
        for path in python_files("tests")
        for name in imported_modules(path)
        if any(part.startswith("test_") or part == "conftest" for part in name.split("."))
    }
    assert not offenders, "shared test code belongs in tests/support:\n" + "\n".join(sorted(offenders))


def test_examples_and_benchmarks_import_no_test_code():
    offenders = {
        f"{path.relative_to(REPO)}: {name}"
        for folder in ("examples", "bench")
        for path in python_files(folder)
        for name in imported_modules(path)
        if name.split(".")[0] in {"tests", "servers", "conftest"}
    }
    assert not offenders, "\n".join(sorted(offenders))


def edits_sys_path(path: Path) -> bool:
    return any(
        isinstance(node, ast.Attribute) and node.attr in {"insert", "append", "extend"}
        and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
        and isinstance(node.value.value, ast.Name) and node.value.value.id == "sys"
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
    )


def test_no_test_example_or_bench_file_edits_sys_path():
    offenders = [str(path.relative_to(REPO)) for folder in ("bench", "examples", "tests")
                 for path in python_files(folder) if edits_sys_path(path)]
    assert not offenders, "run bench as python3 -m bench.NAME, import tests.support:\n" + "\n".join(offenders)
