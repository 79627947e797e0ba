"""Who imports whom: every import statement of the project's packages (top-level and lazy, in
functions) read with :mod:`ast`, reduced to edges between top-level packages."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("stabmon", "trainer_hooks", "monitor", "dashboard", "migrations", "stabmon_cli", "bench")


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file, relative to the repository root
    line: int
    module: str  # the absolute dotted name imported

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    @property
    def package(self) -> str:
        return self.path.parts[0]

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module}"


def _module_of(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> Iterator[Import]:
    rel = path.relative_to(ROOT)
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_of(rel).split(".")
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield Import(rel, node.lineno, module)


def project_imports(packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    out: list[Import] = []
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out.extend(imports_of(path))
    return out


def package_edges(packages: tuple[str, ...] = PACKAGES) -> dict[tuple[str, str], list[Import]]:
    """``{(importer, imported): [imports]}`` between distinct top-level project packages."""
    edges: dict[tuple[str, str], list[Import]] = {}
    for imp in project_imports(packages):
        if imp.top in packages and imp.top != imp.package:
            edges.setdefault((imp.package, imp.top), []).append(imp)
    return edges
