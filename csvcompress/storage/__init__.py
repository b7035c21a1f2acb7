"""Where output images go: one small interface, backends chosen by configuration."""

from __future__ import annotations

from collections.abc import Callable

from csvcompress.config import Settings
from csvcompress.errors import ConfigError
from csvcompress.storage.base import BlockingPut, Storage
from csvcompress.storage.cloudinary import CloudinaryStorage
from csvcompress.storage.files import CsvFiles, LocalFiles
from csvcompress.storage.local import LocalStorage
from csvcompress.storage.null import NullStorage

__all__ = [
    "BACKENDS",
    "BlockingPut",
    "CloudinaryStorage",
    "CsvFiles",
    "LocalFiles",
    "LocalStorage",
    "NullStorage",
    "Storage",
    "create_files",
    "create_storage",
]


def _local(settings: Settings) -> Storage:
    return LocalStorage(settings.storage.dir, f"{settings.server.base_url}/files")


def _null(settings: Settings) -> Storage:
    return NullStorage(f"{settings.server.base_url}/files")


def _cloudinary(settings: Settings) -> Storage:
    return CloudinaryStorage(settings.storage.cloudinary)


def _s3(settings: Settings) -> Storage:
    # Imported here: obstore is part of the optional "distributed" extra.
    try:
        from csvcompress.storage.s3 import S3Storage
    except ImportError as exc:
        raise ConfigError(
            f"storage.backend: \"s3\" needs pip install 'csvcompress[distributed]' ({exc})"
        ) from None
    return S3Storage(settings.storage.s3)


# A typed registry rather than dotted import strings: mypy checks every entry.
BACKENDS: dict[str, Callable[[Settings], Storage]] = {
    "local": _local,
    "null": _null,
    "cloudinary": _cloudinary,
    "s3": _s3,
}


def create_storage(settings: Settings) -> Storage:
    try:
        factory = BACKENDS[settings.storage.backend]
    except KeyError:
        raise ConfigError(
            f"storage.backend: {settings.storage.backend!r} is not available"
        ) from None
    return factory(settings)


def create_files(settings: Settings) -> CsvFiles:
    """Where the CSVs are kept: beside the database, or in S3 where every process reads them."""
    if not settings.cluster.distributed:
        return LocalFiles()
    try:
        from csvcompress.storage.s3 import S3Files
    except ImportError as exc:
        raise ConfigError(
            f"cluster.mode: \"distributed\" needs pip install 'csvcompress[distributed]' ({exc})"
        ) from None
    return S3Files(settings.storage.s3)
