"""docs/integrations.md shows code that runs: each snippet appears verbatim in the example it names.

A snippet is a fenced ``python`` (or ``bash``, for a shell-script example) block right after a
``<!-- example: PATH -->`` comment. It
must match a run of consecutive lines of that file, compared after removing the common
indentation (the example's lines sit inside ``main()``). The examples themselves run in
``test_examples.py``, ``test_wandb.py`` and ``test_import.py`` (the FSDP2 snippet's source is
``tests/trainer_hooks/test_fsdp2.py``, an integration test itself), so a snippet that drifts from
working code fails here.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "integrations.md"
SNIPPET = re.compile(r"<!-- example: (?P<path>\S+) -->\n```(?:python|bash)\n(?P<code>.*?)```", re.S)


def snippets() -> list[tuple[str, str]]:
    return [(m["path"], m["code"]) for m in SNIPPET.finditer(DOC.read_text())]


def appears_verbatim(snippet: str, source: str) -> bool:
    want = textwrap.dedent(snippet).strip("\n")
    n = len(want.splitlines())
    lines = source.splitlines()
    return any(textwrap.dedent("\n".join(lines[i : i + n])) == want for i in range(len(lines) - n + 1))


def test_every_example_has_a_snippet():
    assert {path for path, _ in snippets()} == {
        "examples/plain_loop.py",
        "examples/hf_trainer.py",
        "examples/lightning_module.py",
        "examples/past_runs.sh",
        "tests/trainer_hooks/test_fsdp2.py",  # needs two processes: the example is the test
    }


@pytest.mark.parametrize(
    ("path", "code"), snippets(), ids=lambda v: v.splitlines()[0][:40] if "\n" in v else v
)
def test_snippet_is_copied_from_its_example(path, code):
    assert appears_verbatim(code, (ROOT / path).read_text()), (
        f"docs/integrations.md snippet not in {path}:\n{code}"
    )


def test_the_check_catches_a_drifted_snippet():
    source = "def main():\n    a = 1\n    b = a + 1\n"
    assert appears_verbatim("a = 1\nb = a + 1\n", source)
    assert not appears_verbatim("a = 1\nb = a + 2\n", source)
    assert not appears_verbatim("b = a + 1\na = 1\n", source)
