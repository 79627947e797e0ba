"""The floors hold: who may import whom, checked on every import statement (top-level and lazy).

The ground floor (``stabmon``: wire contract, pure detector, divergence definition) imports
nothing above it; the training side (``trainer_hooks``) and the collector side (``monitor``,
``dashboard``, ``migrations``) stand on it and never import each other; the roof
(``stabmon_cli``) and the benchmarks wire everything together. A training job must not carry a
web stack and a collector container must not carry PyTorch, so the third-party imports are
checked too: statically here, and at run time in a fresh interpreter (a static check cannot see
what a dependency pulls in).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict

import pytest

from tests.architecture.imports import PACKAGES, ROOT, Import, package_edges, project_imports

ALL = (*PACKAGES, "tests")
ANYTHING = frozenset(ALL) - {"tests"}

# Which top-level packages each package may import (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "stabmon": frozenset(),
    "trainer_hooks": frozenset({"stabmon"}),
    "dashboard": frozenset({"stabmon"}),
    "monitor": frozenset({"stabmon", "dashboard"}),
    "migrations": frozenset({"monitor", "stabmon"}),
    "stabmon_cli": ANYTHING,
    "bench": ANYTHING,
}

# Single imports that break a rule today, each with the reason it is tolerated. A test below
# fails once one of them is gone, so the entry is removed with it.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}

WEB_STACK = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "uvicorn",
    "alembic",
    "psycopg",
    "plotly",
    "pydantic_settings",
    "prometheus_client",
)
TRAINING_STACK = ("torch", "transformers", "lightning", "pytorch_lightning")
# Who must not import which third-party stack.
FORBIDDEN_THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "stabmon": WEB_STACK + TRAINING_STACK,
    "trainer_hooks": WEB_STACK,
    "monitor": TRAINING_STACK,
    "dashboard": TRAINING_STACK,
    "migrations": TRAINING_STACK,
}


def _known(imp: Import) -> bool:
    return (imp.path.as_posix(), imp.module) in KNOWN_VIOLATIONS


def _report(bad: list[Import]) -> str:
    return "\n".join(str(i) for i in sorted(bad, key=lambda i: (str(i.path), i.line)))


@pytest.fixture(scope="module")
def edges() -> dict[tuple[str, str], list[Import]]:
    return package_edges(ALL)


def test_every_package_imports_only_the_floors_it_stands_on(edges) -> None:  # noqa: ANN001
    bad = [
        imp
        for (src, dst), imps in edges.items()
        if src in ALLOWED and dst not in ALLOWED[src]
        for imp in imps
        if not _known(imp)
    ]
    assert not bad, "imports across the layers' rules (see ALLOWED):\n" + _report(bad)


def test_every_known_violation_still_exists() -> None:
    """An allowed exception whose import is gone must leave ``KNOWN_VIOLATIONS`` too, or it
    would silently allow the edge to come back."""
    present = {(i.path.as_posix(), i.module) for i in project_imports(ALL)}
    gone = sorted(set(KNOWN_VIOLATIONS) - present)
    assert not gone, f"remove these from KNOWN_VIOLATIONS, the imports are gone: {gone}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's node list, found by depth-first search from each node (the
    graph has a handful of nodes)."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                i = path.index(min(path))  # one rotation per cycle
                found.add(tuple(path[i:] + path[:i]))
            elif nxt not in path and nxt > start:
                walk(start, nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return [list(c) for c in sorted(found)]


def test_the_cycle_search_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_top_level_packages(edges) -> None:  # noqa: ANN001
    graph: dict[str, set[str]] = defaultdict(set)
    for (src, dst), imps in edges.items():
        if any(not _known(i) for i in imps):
            graph[src].add(dst)
    cycles = _cycles(graph)
    lines = [" -> ".join([*c, c[0]]) for c in cycles]
    pairs = [(a, b) for c in cycles for a, b in zip(c, c[1:] + c[:1], strict=True)]
    shown = [str(i) for pair in pairs for i in edges[pair] if not _known(i)]
    assert not cycles, "import cycles:\n" + "\n".join(lines) + "\nthrough:\n" + "\n".join(shown)


@pytest.mark.parametrize("package", sorted(FORBIDDEN_THIRD_PARTY))
def test_no_forbidden_third_party_stack(package: str) -> None:
    forbidden = FORBIDDEN_THIRD_PARTY[package]
    bad = [i for i in project_imports((package,)) if i.top in forbidden]
    assert not bad, f"{package} must not import {', '.join(forbidden)}:\n" + _report(bad)


# ---- at run time: what the imports really pull in ----------------------------------------------
_PROBE = r"""
import importlib, json, pkgutil, sys
packages, optional, forbidden = json.loads(sys.argv[1])
skipped = []
for name in packages:
    pkg = importlib.import_module(name)
    for info in pkgutil.walk_packages(pkg.__path__, name + "."):
        try:
            importlib.import_module(info.name)
        except ImportError as e:
            if not info.name.startswith(tuple(optional)):
                raise
            skipped.append(f"{info.name}: {e}")
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(forbidden))
print(json.dumps({"loaded": loaded, "skipped": skipped}))
"""


def _probe(packages: list[str], forbidden: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    arg = json.dumps([packages, list(optional), list(forbidden)])
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, arg], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_importing_the_whole_training_side_loads_no_web_stack() -> None:
    """Every module of ``trainer_hooks``; an integration whose optional framework is not
    installed is left out (the others are imported)."""
    got = _probe(["trainer_hooks"], WEB_STACK, optional=("trainer_hooks.integrations.",))
    assert got["loaded"] == [], f"the training side pulled in {got['loaded']} (skipped: {got['skipped']})"


@pytest.mark.integration
def test_importing_the_collector_and_dashboard_loads_no_training_stack() -> None:
    got = _probe(["monitor", "dashboard"], (*TRAINING_STACK, "trainer_hooks"))
    assert got["loaded"] == [], f"the collector pulled in {got['loaded']}"


def test_sql_stays_behind_the_store() -> None:
    """Routes and services hold no SQL: inside the collector only ``monitor/store`` imports
    SQLAlchemy (the API maps database errors by the classes the store names)."""
    bad = [
        imp
        for imp in project_imports(("monitor", "dashboard"))
        if imp.top == "sqlalchemy" and imp.path.parts[:2] != ("monitor", "store")
    ]
    assert not bad, "SQLAlchemy imported outside monitor/store:\n" + _report(bad)
