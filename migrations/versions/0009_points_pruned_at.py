"""runs.points_pruned_at: when retention dropped a finished run's raw points

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

``stabmon db prune`` deletes the raw ``points`` (and ``ingest_batches``) of finished runs past
an age and keeps their rollups; this column says which runs it pruned, so series reads of them
answer from the rollups. Nullable; existing runs get NULL (not pruned).

Added and dropped in place (native on PostgreSQL and on SQLite >= 3.35), never by a rebuild of
``runs``: on SQLite that would drop the old table and, with foreign keys on, cascade to every
child row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("points_pruned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE runs DROP COLUMN points_pruned_at")
