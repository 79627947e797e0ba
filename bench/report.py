"""Where benchmark results go: one section per benchmark in docs/benchmarks.md.

Each benchmark rewrites its own ``## <Title>`` section (up to the next ``## `` heading) and
leaves the others alone, so they can run independently and in any order.
"""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(title: str, text: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the section headed ``## {title}`` in ``path`` with ``text`` (which starts with
    that heading), or append it when the file has no such section yet."""
    heading = f"## {title}"
    if not text.startswith(heading + "\n"):
        raise ValueError(f"section text must start with {heading!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = text.rstrip("\n") + "\n"
    if pattern.search(current):
        new = pattern.sub(lambda _: body + "\n", current, count=1).rstrip("\n") + "\n"
    else:
        new = current.rstrip("\n") + "\n\n" + body
    path.write_text(new)
