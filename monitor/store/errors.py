"""Errors the store raises for conditions a caller can act on (the API maps them to 4xx).

Database outages surface as the driver's own errors, which the store does not wrap; it names
their classes here (:data:`DATABASE_DOWN`, :data:`POOL_EXHAUSTED`, :data:`UNSTORABLE`) so that
the API maps them to 503 / 422 without importing SQLAlchemy.
"""

from sqlalchemy import exc as _sa

DATABASE_DOWN: tuple[type[Exception], ...] = (
    _sa.OperationalError,
    _sa.InterfaceError,
    _sa.DisconnectionError,
)
"""The database is unreachable or dropped the connection (503 with ``Retry-After``)."""
POOL_EXHAUSTED: type[Exception] = _sa.TimeoutError
"""Every pooled connection is busy past the checkout timeout (503, the collector is overloaded)."""
UNSTORABLE: type[Exception] = _sa.DataError
"""A value passed validation but the database cannot hold it, e.g. NUL in PostgreSQL text (422)."""


class StoreError(Exception):
    """Base class for store errors."""


class NotFound(StoreError, LookupError):
    """The run (or token, project) does not exist, or is not visible to the caller's project.
    A LookupError, so readers that must not import the store (the dashboard) can catch it."""


class LimitExceeded(StoreError):
    """The request would take a run past a documented storage limit (e.g. series per run)."""


class Conflict(StoreError):
    """The request clashes with stored state (answered 409). Run ids are per project, so
    registering an id that another project uses is not one: nothing may reveal that it exists."""
