"""runs.external_id: run ids unique per project, behind an internal key

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

``runs.id`` was both the id clients choose and the key every child table references, unique
across projects: registering a run id another project used answered 409 and so revealed that
it existed. The id the API speaks moves to ``external_id``, unique per (project, external id);
``runs.id`` stays the internal key, so no child row changes. Existing runs keep their id as
both. Runs registered from now on get a generated internal key.

No table is rebuilt: on SQLite a rebuild of ``runs`` drops the old table, and with foreign keys
on, that deletes every series, point and alert through the cascades. SQLite adds a NOT NULL
column only with a default, so there the column keeps ``DEFAULT ''`` (the store always sets it);
PostgreSQL drops the default once the column is filled.

The downgrade puts each run back under its external id (copying the run row, moving its child
rows, deleting the old row), and refuses when two projects share an external id, which the old
schema cannot hold.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_runs_project_id_external_id"
CHILDREN = ("series", "ingest_batches", "alerts", "run_state", "alert_deliveries")
RUN_COLUMNS = "project_id, name, status, variant, config, summary, last_step, created_at, updated_at"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("ALTER TABLE runs ADD COLUMN external_id VARCHAR(64) NOT NULL DEFAULT ''")
        op.execute("UPDATE runs SET external_id = id")
    else:
        op.add_column("runs", sa.Column("external_id", sa.String(64), nullable=True))
        op.execute("UPDATE runs SET external_id = id")
        op.alter_column("runs", "external_id", existing_type=sa.String(64), nullable=False)
    op.create_index(INDEX, "runs", ["project_id", "external_id"], unique=True)


def downgrade() -> None:
    bind = op.get_bind()
    shared = (
        bind.execute(
            sa.text(
                "SELECT external_id FROM runs GROUP BY external_id HAVING count(*) > 1 UNION "
                # an id that is already another run's internal key (a client-chosen 32-hex id)
                "SELECT a.external_id FROM runs AS a JOIN runs AS b ON b.id = a.external_id AND b.id <> a.id "
                "ORDER BY 1"
            )
        )
        .scalars()
        .all()
    )
    if shared:
        listed = ", ".join(repr(x) for x in shared[:10]) + (" ..." if len(shared) > 10 else "")
        raise RuntimeError(
            f"cannot downgrade below 0005: {len(shared)} run id(s) are used by more than one project "
            f"({listed}); before 0005 run ids were unique across projects"
        )
    op.drop_index(INDEX, table_name="runs")
    moved = "SELECT id FROM runs WHERE id <> external_id"
    # The copy first, so the child rows always reference an existing run (foreign keys stay on).
    op.execute(
        f"INSERT INTO runs (id, external_id, {RUN_COLUMNS}) "
        f"SELECT external_id, external_id, {RUN_COLUMNS} FROM runs WHERE id <> external_id"
    )
    for table in CHILDREN:
        op.execute(
            f"UPDATE {table} SET run_id = (SELECT r.external_id FROM runs AS r WHERE r.id = {table}.run_id) "
            f"WHERE run_id IN ({moved})"
        )
    op.execute("DELETE FROM runs WHERE id <> external_id")
    # Native on PostgreSQL and on SQLite >= 3.35 (no table rebuild).
    op.execute("ALTER TABLE runs DROP COLUMN external_id")
