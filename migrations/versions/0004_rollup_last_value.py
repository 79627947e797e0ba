"""rollups.vlast: the value at each chunk's last step, so series queries need no point lookups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

A downsampled series query reports each bucket's last value. Reading it from ``points`` cost one
primary-key lookup per bucket (6,250 for 10 keys at ``max_points=1000``), most of the query's
time on PostgreSQL; the chunk summary now carries it. Existing rows are filled from the points
in the upgrade. NULL means NaN, as in ``points.value``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("rollups", sa.Column("vlast", sa.Float(precision=53), nullable=True))
    op.execute(
        "UPDATE rollups SET vlast = (SELECT p.value FROM points AS p WHERE p.series_id = rollups.series_id "
        "AND p.rank = rollups.rank AND p.step = rollups.last_step)"
    )


def downgrade() -> None:
    # Native on PostgreSQL and on SQLite >= 3.35 (no table rebuild).
    op.execute("ALTER TABLE rollups DROP COLUMN vlast")
