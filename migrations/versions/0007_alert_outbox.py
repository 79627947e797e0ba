"""alert outbox: webhook deliveries still owed survive a collector restart

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25

One row per (alert, event, webhook target) that the dispatcher has scheduled and not yet
finished: its next attempt number, when it is due, and the payload. A restarted collector
resumes them (see ``monitor/alerts/outbox.py``). A new table: nothing is rebuilt or moved.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alert_outbox",
        sa.Column("alert_id", BigId, nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alerts.id"], name=op.f("fk_alert_outbox_alert_id_alerts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("alert_id", "event", "target_id", name=op.f("pk_alert_outbox")),
    )


def downgrade() -> None:
    op.drop_table("alert_outbox")
