"""The architecture's rules, read from the source: which package may import which, and the size
limits that keep every function to one job (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lvlmva"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 520

# package -> prefixes it must never import (at module level or inside a function)
FORBIDDEN = {
    "engine": ("lvlmva.vision", "lvlmva.pipeline", "lvlmva.critics", "lvlmva.api",
               "lvlmva.simulation", "lvlmva.runs", "lvlmva.review", "torch"),
    "cache": ("lvlmva.engine", "lvlmva.vision", "lvlmva.pipeline", "lvlmva.critics", "torch"),
    "vision": ("lvlmva.engine", "lvlmva.pipeline", "lvlmva.critics", "lvlmva.api",
               "lvlmva.simulation", "lvlmva.cache", "lvlmva.review", "aiohttp", "openai"),
    "prompts": ("lvlmva.engine", "lvlmva.vision", "lvlmva.pipeline", "lvlmva.critics"),
}  # fmt: skip


def _modules(package: str | None = None) -> list[Path]:
    root = PACKAGE / package if package else PACKAGE
    return sorted(p for p in root.rglob("*.py") if "static" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_their_contract_allows(package):
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in _modules(package)
        for line, name in _imports(path)
        if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[package])
    ]
    assert not bad, "\n".join(bad)


def test_the_simulator_lives_outside_the_engine():
    assert not (PACKAGE / "engine" / "sim").exists()


def test_functions_and_modules_stay_small():
    too_long = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(PACKAGE.parent)
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            too_long.append(f"{where}: {n} lines (module limit {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
