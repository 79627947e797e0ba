"""The collector's SQL schema (SQLAlchemy Core tables; Alembic migrations mirror them).

Shaped for the workload: hundreds of series per run, one value per series per step,
read back by (run, key) over step ranges. Each series is one row in ``series`` (its key
parsed into layer/site/stat), and every value is one row of the narrow ``points`` table
whose composite primary key (series_id, rank, step) is exactly the range-scan order.

Non-finite values: PostgreSQL's double precision stores NaN and +/-inf natively. SQLite
stores inf natively but turns NaN into NULL, so ``points.value``/``latest.value`` are
nullable and NULL *means NaN* (no other NULL is ever written); :mod:`monitor.store.codec`
handles both backends.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

# Deterministic constraint names, so Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Timestamps are timezone-aware UTC everywhere.
TS = DateTime(timezone=True)
# BIGINT autoincrement does not work on SQLite (only INTEGER PRIMARY KEY aliases rowid).
BigId = BigInteger().with_variant(Integer(), "sqlite")

projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", TS, nullable=False),
    # The project's detector overrides (stabmon.detect.layers), NULL when it sets none.
    Column("detector", JSON, nullable=True),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 hex of the token
    Column("prefix", String(16), nullable=False),  # shown in `token list`, useless for auth
    Column("label", String(200), nullable=True),
    Column("created_at", TS, nullable=False),
    Column("revoked_at", TS, nullable=True),
)

# A run has two ids. ``external_id`` is the one the API speaks (client-chosen, or generated):
# unique per project only, so two projects can each have a run ``exp-1`` and neither can learn
# that the other's exists. ``id`` is the internal key that every child table references: a
# generated uuid hex (runs registered before migration 0005 kept their external id as theirs).
# Routes never see it; the store resolves (project, external id) -> id once per request, in
# the lookup it already made to check that the run belongs to the token's project.
runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("external_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("variant", String(200), nullable=True),  # config["variant"], indexed for filtering
    Column("config", JSON, nullable=False),
    Column("summary", JSON, nullable=False),
    Column("last_step", BigInteger, nullable=True),
    # The collector-wide and project detector overrides as they stood when the run was
    # registered ({"collector": {...}, "project": {...}}): the run is judged by them and its own
    # config["detector"] to the end, whatever changes later. NULL for runs registered before
    # migration 0008, which are judged by their own overrides only, as they were.
    Column("detector_layers", JSON, nullable=True),
    # When ``stabmon db prune`` dropped the run's raw points (NULL: never). Series reads of a
    # pruned run answer from the rollups (16-step chunk summaries); see monitor.store.retention.
    Column("points_pruned_at", TS, nullable=True),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Index("ix_runs_project_created", "project_id", "created_at"),
    # A unique index, not a constraint: SQLite adds an index in place, where a constraint would
    # rebuild the table (and dropping ``runs`` with foreign keys on cascades to every child).
    Index("uq_runs_project_id_external_id", "project_id", "external_id", unique=True),
)

series = Table(
    "series",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(128), nullable=False),
    Column("layer", Integer, nullable=True),
    Column("site", String(32), nullable=True),
    Column("stat", String(128), nullable=False),
    UniqueConstraint("run_id", "key", name="uq_series_run_id_key"),
)

# points, rollups and latest reference series.id without a foreign key (migration 0006): the
# check cost PostgreSQL a trigger call per stored value, and only the store's batch write,
# holding the run's lock, inserts them. A trigger on series deletes a deleted series' rows from
# all three, as ON DELETE CASCADE did.
points = Table(
    "points",
    metadata,
    Column("series_id", BigId, nullable=False),
    Column("rank", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("value", Float(precision=53), nullable=True),  # NULL = NaN (SQLite); see module doc
    PrimaryKeyConstraint("series_id", "rank", "step", name="pk_points"),
    # SQLite: the rows live in the primary-key b-tree itself (clustered by series, rank, step),
    # halving the writes per value and making range scans sequential.
    sqlite_with_rowid=False,
)

# Per-series summaries of fixed ROLLUP_STEPS-step chunks (chunk = step // ROLLUP_STEPS), kept
# exact at ingest by re-aggregating every chunk a batch touches. Downsampled series queries
# read these instead of the points (1/ROLLUP_STEPS of the rows). Aggregates are over the
# non-NaN values; n_nan counts the NaNs; vlast is the value at last_step.
ROLLUP_STEPS = 16
rollups = Table(
    "rollups",
    metadata,
    Column("series_id", BigId, nullable=False),
    Column("rank", Integer, nullable=False),
    Column("chunk", BigInteger, nullable=False),
    Column("n", Integer, nullable=False),
    Column("n_nan", Integer, nullable=False),
    Column("vmin", Float(precision=53), nullable=True),
    Column("vmax", Float(precision=53), nullable=True),
    Column("vsum", Float(precision=53), nullable=True),
    Column("last_step", BigInteger, nullable=False),
    Column("vlast", Float(precision=53), nullable=True),  # the value at last_step (NULL = NaN)
    PrimaryKeyConstraint("series_id", "rank", "chunk", name="pk_rollups"),
    sqlite_with_rowid=False,
)

latest = Table(
    "latest",
    metadata,
    Column("series_id", BigId, primary_key=True),
    Column("rank", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("value", Float(precision=53), nullable=True),
)

ingest_batches = Table(
    "ingest_batches",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("batch_id", String(128), nullable=False),
    Column("n_points", Integer, nullable=False),
    Column("received_at", TS, nullable=False),
    # The idempotency guarantee: concurrent retries of one batch race on this constraint.
    UniqueConstraint("run_id", "batch_id", name="uq_ingest_batches_run_id_batch_id"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("rule", String(128), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("last_step", BigInteger, nullable=False),
    Column("message", Text, nullable=False),
    Column("evidence", JSON, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Index("ix_alerts_run_id_status", "run_id", "status"),
    # At most one OPEN alert per (run, rule): a partial unique index on both backends.
    Index(
        "uq_alerts_open_run_rule",
        "run_id",
        "rule",
        unique=True,
        postgresql_where=text("status = 'open'"),
        sqlite_where=text("status = 'open'"),
    ),
)

run_state = Table(
    "run_state",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    # Text, not JSON: detector state may hold NaN/inf floats, which Python's json round-trips
    # but PostgreSQL's json type rejects.
    Column("detector_state", Text, nullable=False),
    Column("last_step", BigInteger, nullable=True),
    Column("updated_at", TS, nullable=False),
)

# Used by tests and `truncate`: children before parents.
# Webhook delivery (monitor.alerts): one row per attempt to deliver one alert event to one
# webhook (revision 0002). URLs are stored redacted; ``target_id`` (a fingerprint of the full
# URL) says which rows share a receiver; ``run_id`` is the run's internal key.
alert_deliveries = Table(
    "alert_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("alert_id", BigId, ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", String(64), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("event", String(16), nullable=False),
    Column("target_id", String(16), nullable=False),
    Column("url", String(500), nullable=False),
    Column("format", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Column("created_at", TS, nullable=False),
    Index("ix_alert_deliveries_alert_id", "alert_id", "id"),
    Index("ix_alert_deliveries_run_id", "run_id", "id"),
)


# The deliveries the dispatcher still owes (revision 0007), keyed by (alert_id, event,
# target_id); the payload as built (never the run's webhooks), the URL not at all.
alert_outbox = Table(
    "alert_outbox",
    metadata,
    Column("alert_id", BigId, ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True),
    Column("event", String(16), primary_key=True),
    Column("target_id", String(16), primary_key=True),
    Column("owner", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("due_at", TS, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", TS, nullable=False),
)


ALL_TABLES = (
    alert_outbox,
    alert_deliveries,
    run_state,
    alerts,
    ingest_batches,
    latest,
    rollups,
    points,
    series,
    runs,
    tokens,
    projects,
)
