"""Where output images go: one small interface, backends chosen by configuration."""

from __future__ import annotations

from collections.abc import Callable

from csvcompress.config import Settings
from csvcompress.errors import ConfigError
from csvcompress.storage.base import BlockingPut, Storage
from csvcompress.storage.cloudinary import CloudinaryStorage
from csvcompress.storage.local import LocalStorage
from csvcompress.storage.null import NullStorage

__all__ = [
    "BACKENDS",
    "BlockingPut",
    "CloudinaryStorage",
    "LocalStorage",
    "NullStorage",
    "Storage",
    "create_storage",
]


def _local(settings: Settings) -> Storage:
    return LocalStorage(settings.storage.dir, f"{settings.server.base_url}/files")


def _null(settings: Settings) -> Storage:
    return NullStorage(f"{settings.server.base_url}/files")


def _cloudinary(settings: Settings) -> Storage:
    return CloudinaryStorage(settings.storage.cloudinary)


# A typed registry rather than dotted import strings: mypy checks every entry.
BACKENDS: dict[str, Callable[[Settings], Storage]] = {
    "local": _local,
    "null": _null,
    "cloudinary": _cloudinary,
}


def create_storage(settings: Settings) -> Storage:
    try:
        factory = BACKENDS[settings.storage.backend]
    except KeyError:
        raise ConfigError(
            f"storage.backend: {settings.storage.backend!r} is not available"
        ) from None
    return factory(settings)
