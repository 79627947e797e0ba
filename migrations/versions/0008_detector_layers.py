"""detector settings per project, and the layers each run was registered with

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25

``projects.detector``: the project's detector overrides (NULL: none). ``runs.detector_layers``:
the collector-wide and project overrides as they stood when the run was registered, so a run is
judged by the same settings to its end. Both nullable; existing rows get NULL, which for a run
means "its own config.detector only", exactly how it was judged before.

No table is rebuilt: both columns are added and dropped in place (native on PostgreSQL and on
SQLite >= 3.35). A rebuild of ``runs`` on SQLite would drop the old table and, with foreign keys
on, delete every series, point and alert through the cascades.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (("projects", "detector"), ("runs", "detector_layers"))


def upgrade() -> None:
    for table, column in COLUMNS:
        # Plain ADD COLUMN on both backends (outside batch mode, so SQLite does not copy the table).
        op.add_column(table, sa.Column(column, sa.JSON(), nullable=True))


def downgrade() -> None:
    for table, column in COLUMNS:
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
