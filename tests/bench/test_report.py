"""bench/report.py rewrites one section of the benchmarks page and leaves the others alone."""

import pytest

from bench.report import write_section


def test_replaces_only_its_own_section_and_appends_new_ones(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Ingest\nold ingest\n\n## Dashboard\ndash\n")
    write_section("Ingest", "## Ingest\nnew ingest\n", doc)
    write_section("Soak", "## Soak\nsoak figures\n", doc)
    assert doc.read_text() == (
        "# Benchmarks\n\n## Ingest\nnew ingest\n\n## Dashboard\ndash\n\n## Soak\nsoak figures\n"
    )


def test_section_text_must_carry_its_heading(tmp_path):
    with pytest.raises(ValueError):
        write_section("Ingest", "no heading", tmp_path / "b.md")
