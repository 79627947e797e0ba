"""Alembic environment for the collector's schema.

The URL comes, in order, from ``config.attributes["url"]`` (set by
:mod:`monitor.store.migrate` for programmatic use), from ``sqlalchemy.url`` in alembic.ini
if someone sets it, and otherwise from :class:`monitor.settings.Settings` (``STABMON_DB``).
``render_as_batch`` lets ALTERs work on SQLite (table copy-and-move).
"""

from alembic import context

from monitor.settings import Settings
from monitor.store.engine import make_engine
from monitor.store.models import metadata

config = context.config
url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or Settings().db


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
