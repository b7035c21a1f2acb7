from __future__ import annotations

from pathlib import Path

import pytest

from csvcompress.config import CloudinarySettings, Settings, replace_settings
from csvcompress.errors import StorageError
from csvcompress.storage import (
    BlockingPut,
    CloudinaryStorage,
    LocalStorage,
    NullStorage,
    create_storage,
)


async def test_local_put_writes_atomically_and_returns_url(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", "http://h:1/files/")
    await storage.start()

    url = await storage.put("req/1-1.jpg", b"abc", "image/jpeg")
    again = await storage.put("req/1-1.jpg", b"abcd", "image/jpeg")

    assert url == again == "http://h:1/files/req/1-1.jpg"
    assert (tmp_path / "files" / "req" / "1-1.jpg").read_bytes() == b"abcd"
    # No temporary files are left behind.
    assert sorted(p.name for p in (tmp_path / "files" / "req").iterdir()) == ["1-1.jpg"]


@pytest.mark.parametrize("key", ["../x.jpg", "a/../../x", ".hidden", "/abs"])
async def test_local_refuses_keys_that_escape(tmp_path: Path, key: str) -> None:
    storage = LocalStorage(tmp_path, "http://h")
    with pytest.raises(StorageError, match="invalid storage key"):
        await storage.put(key, b"x", "image/jpeg")


async def test_local_delete_prefix_and_check(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files", "http://h")
    await storage.start()
    await storage.put("r1/1-1.jpg", b"x", "image/jpeg")
    await storage.put("r2/1-1.jpg", b"x", "image/jpeg")

    await storage.delete_prefix("r1")
    await storage.check()

    assert not (tmp_path / "files" / "r1").exists()
    assert (tmp_path / "files" / "r2" / "1-1.jpg").exists()


async def test_local_write_failure_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "files"
    blocker.write_text("a file where the directory should be")
    storage = LocalStorage(blocker, "http://h")
    with pytest.raises(StorageError, match=r"could not write r/1\.jpg"):
        await storage.put("r/1.jpg", b"x", "image/jpeg")
    with pytest.raises(StorageError, match="not writable"):
        await storage.check()


async def test_null_storage_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # From an empty working directory: a backend writing by relative path would show there.
    monkeypatch.chdir(tmp_path)
    storage = NullStorage("http://h/files")
    assert await storage.put("r/1.jpg", b"x", "image/jpeg") == "http://h/files/r/1.jpg"
    assert storage.put_blocking("r/2.jpg", b"y", "image/jpeg") == "http://h/files/r/2.jpg"
    assert list(tmp_path.iterdir()) == []
    assert storage.local_file("r/1.jpg") is None  # nothing kept, so /files/ has nothing to serve


def test_backend_is_chosen_by_settings(tmp_path: Path) -> None:
    local = replace_settings(Settings(), storage={"dir": str(tmp_path)})
    assert create_storage(local).name == "local"
    null = replace_settings(Settings(), storage={"backend": "null"})
    assert create_storage(null).name == "null"


def test_local_and_null_storage_write_blocking_but_cloudinary_does_not(tmp_path: Path) -> None:
    # The worker stores from its CPU thread only for backends that offer put_blocking.
    local = LocalStorage(tmp_path, "http://files.test")
    assert isinstance(local, BlockingPut)
    assert local.put_blocking("r/1-1.jpg", b"abc", "image/jpeg") == "http://files.test/r/1-1.jpg"
    assert (tmp_path / "r" / "1-1.jpg").read_bytes() == b"abc"
    assert isinstance(NullStorage("http://x"), BlockingPut)
    cloud = CloudinarySettings(cloud_name="demo", api_key="1234", api_secret="s3cret")
    assert not isinstance(CloudinaryStorage(cloud), BlockingPut)
