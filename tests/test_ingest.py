"""uploads.ingest: one pass over the file, and nothing stored unless all of it passes."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from csvcompress.config import Settings, replace_settings
from csvcompress.errors import CsvInvalid
from csvcompress.http import uploads
from csvcompress.store import sqlite
from csvcompress.store.sqlite import SqliteStore
from tests.conftest import csv_bytes


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = replace_settings(Settings(), database={"path": str(tmp_path / "db.sqlite3")})
    with closing(sqlite.connect_blocking(settings.database.path)) as conn:
        sqlite.migrate_blocking(conn)
    (tmp_path / "uploads").mkdir()
    return settings


@pytest.fixture
def store(settings: Settings) -> SqliteStore:
    # Unopened: ingesting only needs the writer, which opens a connection of its own.
    return SqliteStore(settings.database.path)


def saved(settings: Settings, data: bytes) -> Path:
    path = settings.data_dir / "uploads" / "upload.csv.part"
    path.write_bytes(data)
    return path


def table(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(settings.database.path) as conn:
        return conn.execute(sql).fetchall()


def test_an_accepted_file_is_stored_with_its_images_in_input_order(
    settings: Settings, store: SqliteStore
) -> None:
    data = csv_bytes(
        [
            ["1", "A", "https://a.example/1.jpg, https://a.example/2.jpg"],
            ["2", "B", "https://a.example/3.jpg"],
            ["3", "C", "https://a.example/1.jpg"],
        ]
    )
    accepted = uploads.ingest(saved(settings, data), settings, store, "https://hooks.example/x")

    assert (accepted.rows, accepted.images) == (3, 4)
    images = table(settings, "SELECT id, row, position, url, source_id FROM images ORDER BY id")
    assert images == [
        (1, 0, 0, "https://a.example/1.jpg", None),
        (2, 0, 1, "https://a.example/2.jpg", None),
        (3, 1, 0, "https://a.example/3.jpg", None),
        (4, 2, 0, "https://a.example/1.jpg", 1),  # a repeat points at the first occurrence
    ]
    request = table(
        settings, "SELECT request_id, status, rows, images_total, input_path FROM requests"
    )
    input_path = settings.data_dir / "uploads" / f"{accepted.request_id}.csv"
    assert request == [(accepted.request_id, "pending", 3, 4, str(input_path))]
    assert input_path.read_bytes() == data


def test_a_problem_after_many_good_rows_leaves_nothing_behind(
    settings: Settings, store: SqliteStore
) -> None:
    good = [[str(n), "P", f"https://a.example/{n}.jpg"] for n in range(12_000)]
    part = saved(settings, csv_bytes([*good, ["12001", "Bad", "ftp://a.example/x.jpg"]]))

    with pytest.raises(CsvInvalid) as info:
        uploads.ingest(part, settings, store, None)

    assert [p.line for p in info.value.problems] == [12_002]
    assert table(settings, "SELECT count(*) FROM images") == [(0,)]
    assert table(settings, "SELECT count(*) FROM requests") == [(0,)]
    assert list((settings.data_dir / "uploads").iterdir()) == []


def test_repeats_link_to_their_first_occurrence_only_within_a_request(
    settings: Settings, store: SqliteStore
) -> None:
    urls = ["a", "b", "a", "c", "b", "a"]
    other = uploads.ingest(
        saved(settings, csv_bytes([["1", "X", "https://x.example/a"]])), settings, store, None
    )
    rows = [[str(n), "P", f"https://x.example/{u}"] for n, u in enumerate(urls)]
    accepted = uploads.ingest(saved(settings, csv_bytes(rows)), settings, store, None)

    linked = table(
        settings,
        f"SELECT id, source_id FROM images WHERE request_id = '{accepted.request_id}' ORDER BY id",
    )
    assert linked == [(2, None), (3, None), (4, 2), (5, None), (6, 3), (7, 2)]
    assert table(
        settings, f"SELECT source_id FROM images WHERE request_id = '{other.request_id}'"
    ) == [(None,)]
