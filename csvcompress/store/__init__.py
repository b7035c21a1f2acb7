"""Where the service keeps its state: the Store protocol and its implementations."""

from csvcompress.config import Settings
from csvcompress.store.base import Store, StoreUnavailable
from csvcompress.store.sqlite import SqliteStore


def create_store(settings: Settings) -> Store:
    """The store the settings ask for: SQLite (single mode) or PostgreSQL (distributed)."""
    if settings.cluster.distributed:
        # Imported here: single mode never loads psycopg (an optional extra).
        from csvcompress.store.postgres import PostgresStore

        return PostgresStore(settings.database.url)
    return SqliteStore(settings.database.path)


__all__ = ["SqliteStore", "Store", "StoreUnavailable", "create_store"]
