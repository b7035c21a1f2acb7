"""Where the service keeps its state: the Store protocol and its implementations."""

from csvcompress.config import Settings
from csvcompress.store.base import Store, StoreUnavailable
from csvcompress.store.sqlite import SqliteStore


def create_store(settings: Settings) -> Store:
    """The store the settings ask for (SQLite: the single-process default)."""
    return SqliteStore(settings.database.path)


__all__ = ["SqliteStore", "Store", "StoreUnavailable", "create_store"]
