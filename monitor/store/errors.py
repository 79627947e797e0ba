"""Errors the store raises for conditions a caller can act on (the API maps them to 4xx).

Database outages surface as SQLAlchemy's ``OperationalError``/``InterfaceError``, which the
API turns into 503 with ``Retry-After``; the store does not wrap them.
"""


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
