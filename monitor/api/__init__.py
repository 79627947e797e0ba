"""The collector's HTTP API (FastAPI), versioned under ``/api/v1``: :func:`create_app`."""

from monitor.api.app import SchemaNotReady, create_app, prepare_database

__all__ = ["SchemaNotReady", "create_app", "prepare_database"]
