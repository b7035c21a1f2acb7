"""A backend that keeps nothing: for benchmarks and dry runs, so callers never branch."""

from __future__ import annotations


class NullStorage:
    name = "null"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    async def start(self) -> None:
        return None

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        return self.put_blocking(key, data, content_type)

    def put_blocking(self, key: str, data: bytes, content_type: str) -> str:
        return f"{self.base_url}/{key}"

    async def delete_prefix(self, prefix: str) -> None:
        return None

    async def check(self) -> None:
        return None

    def local_file(self, key: str) -> None:
        """Nothing is kept, so nothing is served: /files/ answers 404."""
        return None

    async def close(self) -> None:
        return None
