"""rollups: per-series 16-step chunk summaries for downsampled series queries

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

Existing points are summarised in the upgrade, so a database with data keeps answering
series queries exactly.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rollups",
        sa.Column("series_id", BigId, nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("chunk", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("n_nan", sa.Integer(), nullable=False),
        sa.Column("vmin", sa.Float(precision=53), nullable=True),
        sa.Column("vmax", sa.Float(precision=53), nullable=True),
        sa.Column("vsum", sa.Float(precision=53), nullable=True),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"], ["series.id"], name=op.f("fk_rollups_series_id_series"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("series_id", "rank", "chunk", name="pk_rollups"),
        sqlite_with_rowid=False,
    )
    pg = op.get_bind().dialect.name == "postgresql"
    v = "NULLIF(value, CAST('NaN' AS double precision))" if pg else "value"
    op.execute(
        "INSERT INTO rollups (series_id, rank, chunk, n, n_nan, vmin, vmax, vsum, last_step) "
        f"SELECT series_id, rank, step / 16, count(*), count(*) - count({v}), min({v}), max({v}), sum({v}), "
        "max(step) FROM points WHERE true GROUP BY series_id, rank, step / 16"
    )


def downgrade() -> None:
    op.drop_table("rollups")
