"""The tree stays readable: no module over 500 lines, no function over 80 lines outside
the benchmark drivers (``cdcflow bench`` runs whose steps read in order)."""

from __future__ import annotations

import ast
from pathlib import Path

import cdcflow

PACKAGE = Path(cdcflow.__file__).parent
MODULE_LINES = 500
FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_500_lines():
    sizes = {p: len(p.read_text().splitlines()) for p in _modules()}
    long = [f"{p.relative_to(PACKAGE.parent)}: {n}" for p, n in sizes.items() if n > MODULE_LINES]
    assert not long, "modules over 500 lines:\n" + "\n".join(long)


def test_no_function_over_80_lines_outside_the_benchmark_drivers():
    long = []
    for path in _modules():
        if "bench" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {lines}")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
