"""Tests for csv_input: validation (pass 1), iter_rows (pass 2), split_urls, write_output."""

from __future__ import annotations

import csv
import io
import os
import random
import re
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csvcompress.config import LimitSettings
from csvcompress.csv_input import (
    ERRORS_COLUMN,
    OUTPUT_URLS_COLUMN,
    CsvRow,
    CsvSummary,
    ImageOutcome,
    accepted_summary,
    iter_rows,
    split_urls,
    validate,
    write_output,
)
from csvcompress.errors import CsvInvalid
from tests.conftest import csv_bytes

MIB = 1024 * 1024
LIMITS = LimitSettings()
HEADER = "S. No.,Product Name,Input Image Urls\r\n"
URLS = "Input Image Urls"
BINARY = "not a CSV file: it contains binary data"
NOT_UTF8 = 'not UTF-8 text: save the file as "CSV UTF-8"'

# Modest example counts: the whole module should run in a few seconds.
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def write(directory: Path, content: str | bytes, name: str = "in.csv") -> Path:
    path = directory / name
    if isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(content)
    return path


def refusal(path: Path, limits: LimitSettings = LIMITS) -> CsvInvalid:
    with pytest.raises(CsvInvalid) as caught:
        validate(path, limits)
    return caught.value


def problems(path: Path, limits: LimitSettings = LIMITS) -> list[tuple[int, str, str]]:
    return [(p.line, p.column, p.message) for p in refusal(path, limits).problems]


def rows_of(path: Path) -> list[CsvRow]:
    return list(iter_rows(path, validate(path, LIMITS)))


# --- accepted files -------------------------------------------------------------------


def test_a_plain_file_is_summarised(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + '1,Shirt,"https://cdn.example.com/a/1.jpg, https://cdn.example.com/a/2.jpg"\r\n'
        + "2,Hat,https://cdn.example.com/a/3.jpg\r\n",
    )
    assert validate(path, LIMITS) == CsvSummary(
        header=("S. No.", "Product Name", "Input Image Urls"),
        url_column=2,
        serial_column=0,
        name_column=1,
        rows=2,
        images=3,
    )
    assert rows_of(path) == [
        CsvRow(0, 2, ("https://cdn.example.com/a/1.jpg", "https://cdn.example.com/a/2.jpg")),
        CsvRow(1, 3, ("https://cdn.example.com/a/3.jpg",)),
    ]


@pytest.mark.parametrize(
    ("header", "serial", "name", "url"),
    [
        ("S. No.,Product Name,Input Image Urls", 0, 1, 2),
        ("S.No,product name,Input Image URLs", 0, 1, 2),
        ("Sr No,PRODUCT_NAME,Input URLs", 0, 1, 2),
        ("Serial Number,Product-Name,Image Urls", 0, 1, 2),
        ("SNo,Product,image_url", 0, 1, 2),
        ("Sl No,Name,input image url", 0, 1, 2),
        ("S#,Product Name,  Input   Image  Urls  ", 0, 1, 2),
        ("Input Image Urls,Brand,Product Name,Sr. No.", 3, 2, 0),
    ],
)
def test_header_variants_are_matched(
    tmp_path: Path, header: str, serial: int, name: int, url: int
) -> None:
    cells = ["x"] * len(header.split(","))
    cells[url] = "https://a.example/1.jpg"
    path = write(tmp_path, header + "\r\n" + ",".join(cells) + "\r\n")
    summary = validate(path, LIMITS)
    assert (summary.serial_column, summary.name_column, summary.url_column) == (serial, name, url)
    assert summary.header == tuple(header.split(","))


def test_bom_and_lf_line_ends(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfS. No.,Product Name,Input Image Urls\n1,A,https://a/1\n")
    summary = validate(path, LIMITS)
    assert summary.header == ("S. No.", "Product Name", "Input Image Urls")
    assert rows_of(path) == [CsvRow(0, 2, ("https://a/1",))]


def test_cr_line_ends(tmp_path: Path) -> None:
    path = write(
        tmp_path, "S. No.,Product Name,Input Image Urls\r1,A,https://a/1\r2,B,https://a/2\r"
    )
    assert [(r.line, r.urls) for r in rows_of(path)] == [
        (2, ("https://a/1",)),
        (3, ("https://a/2",)),
    ]


def test_line_numbers_after_quoted_multi_line_cells_and_blank_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "\r\n"  # line 1: blank lines before the header are skipped
        "S. No.,Product Name,Input Image Urls\r\n"  # 2
        '1,"Shirt\r\nblue","https://a.example/1.jpg,\r\n'  # 3-4
        'https://a.example/2.jpg"\r\n'  # 5
        "\r\n"  # 6: blank
        "2,Hat,https://a.example/3.jpg\r\n"  # 7
        ",, \r\n"  # 8: all cells blank
        "3,Cap,https://a.example/4.jpg\r\n",  # 9
    )
    assert rows_of(path) == [
        CsvRow(0, 3, ("https://a.example/1.jpg", "https://a.example/2.jpg")),
        CsvRow(1, 7, ("https://a.example/3.jpg",)),
        CsvRow(2, 9, ("https://a.example/4.jpg",)),
    ]
    bad = write(tmp_path, path.read_text(encoding="utf-8") + "4,Cup,ftp://x/5.jpg\r\n", "bad.csv")
    assert problems(bad) == [(10, URLS, "not an http(s) URL: 'ftp://x/5.jpg'")]


def test_short_rows_and_blank_extra_cells_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Input Image Urls,S. No.,Product Name\r\nhttps://a/1\r\nhttps://a/2,2,B,,\r\n",
    )
    assert validate(path, LIMITS).rows == 2


def test_urls_that_need_parsing_are_accepted(tmp_path: Path) -> None:
    cell = (
        "HTTPS://A.Example/x.jpg, http://127.0.0.1:8080/x.jpg, http://[::1]/x.jpg, "
        "https://user@a.example/x.jpg, https://a.example./x.jpg, https://bücher.example/é.jpg, "
        "https://res.cloudinary.com/demo/image/upload/w_100,h_100,c_fill/sample.jpg"
    )
    path = write(tmp_path, f'{HEADER}1,A,"{cell}"\r\n')
    assert validate(path, LIMITS).images == 7


# --- refused files: exact problems ------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    error = refusal(write(tmp_path, b""))
    assert error.message == "the CSV was refused: 1 problem"
    assert [(p.line, p.column, p.message) for p in error.problems] == [(1, "", "the file is empty")]


@pytest.mark.parametrize("content", [b"\xef\xbb\xbf", b"\r\n\r\n", b" , \n\n"])
def test_file_with_nothing_in_it_is_empty(tmp_path: Path, content: bytes) -> None:
    assert problems(write(tmp_path, content)) == [(1, "", "the file is empty")]


def test_header_only(tmp_path: Path) -> None:
    assert problems(write(tmp_path, HEADER + "\r\n,,\r\n")) == [(2, "", "the CSV has no data rows")]


def test_missing_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "Title,Links\r\nA,https://a/1\r\n")
    error = refusal(path)
    assert error.message == "the CSV was refused: 3 problems"
    assert [(p.line, p.column, p.message) for p in error.problems] == [
        (1, "S. No.", "missing column: S. No."),
        (1, "Product Name", "missing column: Product Name"),
        (1, "Input Image Urls", "missing column: Input Image Urls"),
    ]


def test_missing_serial_column_still_checks_the_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "Product Name,Image URLs\r\nA,https://a/1\r\nB,nope\r\n")
    assert problems(path) == [
        (1, "S. No.", "missing column: S. No."),
        (3, "Image URLs", "not an http(s) URL: 'nope'"),
    ]


def test_duplicate_url_column(tmp_path: Path) -> None:
    path = write(tmp_path, "S. No.,Product Name,Image Urls,Input Image URLs\r\n1,A,x,y\r\n")
    assert problems(path)[0] == (1, "Input Image URLs", "duplicate column: Input Image Urls")


def test_duplicate_serial_or_name_column_takes_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path, "Sr No,Product Name,Name,S. No.,Input Image Urls\r\n1,A,B,2,https://a/1\r\n"
    )
    summary = validate(path, LIMITS)
    assert (summary.serial_column, summary.name_column) == (0, 1)


def test_data_in_place_of_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "1,Shirt,https://a/1.jpg\r\n2,Hat,https://a/2.jpg\r\n")
    expected = (
        "the first row must be the header naming the columns: "
        "S. No., Product Name, Input Image Urls"
    )
    assert problems(path) == [(1, "", expected)]


@pytest.mark.parametrize(("separator", "name"), [(";", "semicolons"), ("\t", "tabs")])
def test_wrong_separator(tmp_path: Path, separator: str, name: str) -> None:
    header = separator.join(["S. No.", "Product Name", "Input Image Urls"])
    path = write(tmp_path, header + "\r\n1;A;https://a/1\r\n")
    assert problems(path) == [(1, "", f"the columns must be separated by commas, not {name}")]


def test_row_problems_are_all_listed_with_lines_and_columns(tmp_path: Path) -> None:
    long_url = "https://a.example/" + "x" * 2100
    path = write(
        tmp_path,
        "S. No.,Product Name,Input Image URLs,Brand\r\n"  # 1
        "1,A,,Acme\r\n"  # 2
        "2,B\r\n"  # 3: no URL cell at all
        '3,C,"https://a.example/1.jpg, ftp://a.example/2.jpg, www.a.example/3.jpg"\r\n'  # 4
        "4,D,https://a.example/a b.jpg\r\n"  # 5
        "5,E,https:///no-host.jpg\r\n"  # 6
        "6,F,https://a..example/x.jpg\r\n"  # 7
        "7,G,https://a.example:99999/x.jpg\r\n"  # 8
        "8,H,http://[::1/x.jpg\r\n"  # 9
        "9,I,https://a.example/1.jpg,Acme,extra\r\n"  # 10
        f"10,J,{long_url}\r\n"  # 11
        "11,K,https://a.example:0/x.jpg\r\n"  # 12
        '12,L,"https://a.example/\x07.jpg"\r\n',  # 13
    )
    col = "Input Image URLs"
    assert problems(path) == [
        (2, col, "the URL cell is empty"),
        (3, col, "the URL cell is empty"),
        (4, col, "not an http(s) URL: 'ftp://a.example/2.jpg'"),
        (4, col, "not an http(s) URL: 'www.a.example/3.jpg'"),
        (5, col, "URL contains a space or control character: 'https://a.example/a b.jpg'"),
        (6, col, "URL has no host: 'https:///no-host.jpg'"),
        (7, col, "URL has an invalid host or port: 'https://a..example/x.jpg'"),
        (8, col, "not a valid URL: 'https://a.example:99999/x.jpg'"),
        (9, col, "not a valid URL: 'http://[::1/x.jpg'"),
        (10, "", "the row has 5 cells but the header has 4"),
        (11, col, f"URL is longer than 2048 characters: '{long_url[:100]}…'"),
        (12, col, "URL has an invalid host or port: 'https://a.example:0/x.jpg'"),
        (13, col, "URL contains a space or control character: 'https://a.example/\\x07.jpg'"),
    ]


def test_url_cell_over_the_cap(tmp_path: Path) -> None:
    cell = ", ".join(["https://a.example/1.jpg"] * 3000)  # 75,000 characters
    path = write(tmp_path, f'{HEADER}1,A,"{cell}"\r\n')
    assert problems(path) == [(2, URLS, "the URL cell is longer than 65536 characters")]


def test_problem_list_is_capped(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "".join(f"{i},A,bad{i}\r\n" for i in range(1, 6)))
    error = refusal(path, LimitSettings(max_problems=2))
    assert error.message == "the CSV was refused: more than 2 problems"
    assert [(p.line, p.column, p.message) for p in error.problems] == [
        (2, URLS, "not an http(s) URL: 'bad1'"),
        (3, URLS, "not an http(s) URL: 'bad2'"),
        (4, "", "more problems were found; only the first 2 are listed"),
    ]


def test_too_many_rows_stops_at_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,A,bad\r\n" + "2,B,https://a/2\r\n" * 5)
    error = refusal(path, LimitSettings(max_rows=2))
    assert error.message == "too many rows: the limit is 2"
    assert [(p.line, p.column, p.message) for p in error.problems] == [
        (2, URLS, "not an http(s) URL: 'bad'"),
        (4, "", "too many rows: the limit is 2"),
    ]


def test_too_many_images_stops_at_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + '1,A,"https://a/1, https://a/2"\r\n' * 3)
    error = refusal(path, LimitSettings(max_images=3))
    assert error.message == "too many images: the limit is 3"
    assert [(p.line, p.column, p.message) for p in error.problems] == [
        (3, URLS, "too many images: the limit is 3")
    ]
    assert validate(path, LimitSettings(max_images=6, max_rows=3)).images == 6


def test_unclosed_quote_at_end_of_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, HEADER + "1,A,https://a/1\r\n" + '2,"B,https://a/2\r\n3,C,https://a/3\r\n'
    )
    assert problems(path) == [(3, "", 'a quoted cell is never closed (a " is missing)')]


def test_text_after_a_closing_quote(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,A,bad\r\n" + '2,"B"x,https://a/2\r\n')
    assert problems(path) == [
        (2, URLS, "not an http(s) URL: 'bad'"),
        (3, "", 'bad quoting: a closing " must be followed by a comma or the end of the line'),
    ]


def test_a_parse_error_without_words_of_ours_is_shown_in_pythons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python's csv module may complain in a way no message of ours translates (a newer
    # Python, say): the user still reads the complaint, at the line where reading stopped.
    real_reader = csv.reader

    class Complaining:
        def __init__(self, lines: Iterator[str], **options: Any) -> None:
            self.reader = real_reader(lines, **options)

        @property
        def line_num(self) -> int:
            return self.reader.line_num

        def __iter__(self) -> Complaining:
            return self

        def __next__(self) -> list[str]:
            row = next(self.reader)
            if self.reader.line_num == 4:
                raise csv.Error("a complaint of a newer Python")
            return row

    monkeypatch.setattr(csv, "reader", Complaining)
    path = write(tmp_path, HEADER + "1,A,https://a/1\r\n" + '2,"B\nb",https://a/2\r\n')
    assert problems(path) == [(4, "", "the CSV cannot be parsed: a complaint of a newer Python")]


def test_cell_over_the_size_cap_in_a_multi_line_quoted_cell(tmp_path: Path) -> None:
    big = ("x" * 99 + "\n") * 11_000  # 1.1 million characters, short lines
    path = write(tmp_path, HEADER + "1,A,https://a/1\r\n" + f'2,"{big}",https://a/2\r\n')
    assert problems(path) == [(3, "", "a cell is longer than 1048576 characters")]


def test_cell_over_the_size_cap_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,A," + "x" * (2 * MIB) + "\r\n")
    assert problems(path) == [(2, "", "a cell is longer than 1048576 characters")]


def test_line_over_the_length_cap(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,A,https://a/1\r\n" + "2," * (3 * MIB) + "\r\n")
    assert problems(path) == [(3, "", "a line is longer than 4194304 characters")]


def test_too_many_columns(tmp_path: Path) -> None:
    extra = ",".join(f"c{i}" for i in range(998))
    ok = write(
        tmp_path, f"S. No.,Product Name,Input Image Urls,{extra[:-5]}\r\n1,A,https://a/1\r\n"
    )
    assert len(validate(ok, LIMITS).header) == 1000
    path = write(tmp_path, f"S. No.,Product Name,Input Image Urls,{extra}\r\n1,A,https://a/1\r\n")
    assert problems(path) == [(1, "", "too many columns (1001 > 1000)")]


def test_nul_byte_near_the_start(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER.encode() + b"1,A\x00,https://a/1\r\n")
    assert problems(path) == [(2, "", BINARY)]


def test_nul_byte_far_into_the_file(tmp_path: Path) -> None:
    body = "".join(f"{i},A,https://a/{i}\r\n" for i in range(1, 2001))  # lines 2-2001
    path = write(tmp_path, (HEADER + body).encode() + b"2001,B,https://a/\x00\r\n")
    assert problems(path) == [(2002, "", BINARY)]


def test_binary_file(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40
    assert problems(write(tmp_path, png)) == [(3, "", BINARY)]


def test_utf16_file(tmp_path: Path) -> None:
    path = write(tmp_path, (HEADER + "1,A,https://a/1\r\n").encode("utf-16"))
    assert problems(path) == [(1, "", 'the file is UTF-16 text: save it as "CSV UTF-8"')]


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, (HEADER + "1,A,https://a/1\r\n").encode() + "2,Café,x\r\n".encode("cp1252")
    )
    assert problems(path) == [(3, "", NOT_UTF8)]


def test_not_utf8_far_into_the_file_names_the_right_line(tmp_path: Path) -> None:
    # The text decoder reads ahead by chunks; the reported line must still be exact.
    body = "".join(f"{i},Ä,https://a/{i}\n" for i in range(1, 5001))  # lines 2-5001
    tail = b"5001,\xff,https://a/x\n5002,A,https://a/y\n"
    path = write(tmp_path, HEADER.replace("\r\n", "\r").encode() + body.encode() + tail)
    assert problems(path) == [(5002, "", NOT_UTF8)]


def test_truncated_utf8_at_the_end(tmp_path: Path) -> None:
    path = write(tmp_path, (HEADER + "1,A,https://a/1\r\n2,").encode() + b"\xc3")
    assert problems(path) == [(3, "", NOT_UTF8)]


# --- garbage is answered fast -----------------------------------------------------------


# A guard against quadratic blow-ups (which take minutes on these inputs), not a speed
# measurement: no test reads a clock; the per-test timeout below fails a blow-up, and is
# loose so a busy machine cannot. Speed is `make bench`'s.
blow_up_guard = pytest.mark.timeout(30)


def _refused_fast(path: Path) -> list[tuple[int, str, str]]:
    return problems(path)


@blow_up_guard
def test_a_million_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "a," * 1_000_000 + "\r\n1\r\n")
    assert _refused_fast(path) == [(1, "", "too many columns (1000001 > 1000)")]


@blow_up_guard
def test_a_50_mb_single_field(tmp_path: Path) -> None:
    path = write(tmp_path, b"x" * (50 * MIB))
    assert _refused_fast(path) == [(1, "", "a line is longer than 4194304 characters")]


@blow_up_guard
def test_a_50_mb_quoted_field_with_line_breaks(tmp_path: Path) -> None:
    path = write(
        tmp_path, HEADER.encode() + b'1,"' + b"y" * 79 + b"\n" + (b"z" * 79 + b"\n") * 650_000
    )
    assert _refused_fast(path) == [(2, "", "a cell is longer than 1048576 characters")]


@blow_up_guard
def test_random_binary_data(tmp_path: Path) -> None:
    path = write(tmp_path, random.Random(7).randbytes(20 * MIB))
    assert _refused_fast(path)[0][2] == BINARY


@blow_up_guard
def test_long_cells_of_separators(tmp_path: Path) -> None:
    # The URL splitter must stay linear on runs of blanks and commas.
    cells = [
        "a " * 30_000,
        "a," * 30_000,
        ", " * 30_000 + "x",
        " " * 60_000 + "x",
        "\n" * 60_000 + "x",
    ]
    body = "".join(f'{i},A,"{cell}"\r\n' for i, cell in enumerate(cells * 20))
    found = _refused_fast(write(tmp_path, HEADER + body))
    assert len(found) == LIMITS.max_problems + 1


@blow_up_guard
def test_100k_rows_are_validated_and_read_quickly(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(HEADER)
        for i in range(100_000):
            urls = ", ".join(f"https://cdn.example.com/p/{i}/{j}.jpg" for j in range(3))
            f.write(f'{i + 1},Product {i + 1},"{urls}"\r\n')
    summary = validate(path, LIMITS)
    images = sum(len(row.urls) for row in iter_rows(path, summary))
    # Around 0.4 s each on the 2-core dev box; the timeout only catches blow-ups.
    assert (summary.rows, summary.images, images) == (100_000, 300_000, 300_000)


# --- split_urls -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "urls"),
    [
        ("", []),
        (" ,\n, ", []),
        ("https://a/1", ["https://a/1"]),
        ("  https://a/1 ,  ", ["https://a/1"]),
        ("https://a/1,https://a/2", ["https://a/1", "https://a/2"]),
        ("https://a/1, https://a/2 ,https://a/3", ["https://a/1", "https://a/2", "https://a/3"]),
        (
            "https://a/1\nhttps://a/2\r\n\r\nhttps://a/3",
            ["https://a/1", "https://a/2", "https://a/3"],
        ),
        ("https://a/1,\n  https://a/2", ["https://a/1", "https://a/2"]),
        ("https://a/1,,https://a/2", ["https://a/1", "https://a/2"]),
        ("HTTPS://A/1,Http://a/2", ["HTTPS://A/1", "Http://a/2"]),
        # A comma not next to a blank and not before a scheme is part of the URL.
        ("https://x/w_100,h_100/a.jpg", ["https://x/w_100,h_100/a.jpg"]),
        ("https://x/a,,b.jpg", ["https://x/a,,b.jpg"]),
        ("https://x/a,b.jpg,https://x/c.jpg", ["https://x/a,b.jpg", "https://x/c.jpg"]),
        # Any scheme starts a new piece, so a bad URL is reported on its own.
        ("ftp://a/1.jpg,https://b/2.jpg", ["ftp://a/1.jpg", "https://b/2.jpg"]),
        ("https://a/1.jpg, www.b/2.jpg", ["https://a/1.jpg", "www.b/2.jpg"]),
        # Blanks alone do not separate: the value is refused for its space.
        ("https://x/a b.jpg", ["https://x/a b.jpg"]),
        ("https://x/a\u00a0https://x/b", ["https://x/a\u00a0https://x/b"]),
    ],
)
def test_split_urls(cell: str, urls: list[str]) -> None:
    assert split_urls(cell) == urls


def _split_as_documented(cell: str) -> list[str]:
    """The splitting rule written plainly (slow): runs of blanks and commas between pieces."""
    text = cell.strip("".join(c for c in map(chr, range(0x3001)) if c.isspace()) + ",")
    if not text:
        return []
    parts = re.split(r"([\s,]+)", text)
    urls = [parts[0]]
    for run, piece in zip(parts[1::2], parts[2::2], strict=True):
        line_break = "\n" in run or "\r" in run
        comma_by_blank = "," in run and run.strip(",") != ""
        before_scheme = "," in run and re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://", piece)
        if line_break or comma_by_blank or (before_scheme and run.strip(",") == ""):
            urls.append(piece)
        else:
            urls[-1] += run + piece
    return urls


_CELL_PIECES = ["a", "b/c", ",", ",,", " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0"]
_CELL_PIECES += ["http://x", "https://y/z", "HTTP://Q", "x-y.z://w", "://", "1://"]


@FUZZ
@given(st.lists(st.sampled_from(_CELL_PIECES), max_size=30).map("".join))
def test_split_urls_follows_the_documented_rule(cell: str) -> None:
    assert split_urls(cell) == _split_as_documented(cell)


_LABEL = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
_HOST = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_PATH = st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%é", max_size=40)
_SCHEME = st.sampled_from(["http", "https", "HTTP", "Https"])
_SCHEME_AFTER_COMMA = re.compile(r",[A-Za-z][A-Za-z0-9+.\-]*://")


def _url(scheme: str, host: str, path: str) -> str:
    return f"{scheme}://{host}/{path}"


VALID_URL = st.builds(_url, _SCHEME, _HOST, _PATH).filter(
    # The documented limits of splitting: a URL cannot end with a comma or hold ",scheme://".
    lambda url: not url.endswith(",") and not _SCHEME_AFTER_COMMA.search(url)
)
JOINER = st.sampled_from([",", ", ", "\n", "\r\n", " ,\n ", ",\t"])


@FUZZ
@given(urls=st.lists(VALID_URL, min_size=1, max_size=6), joiner=JOINER)
def test_split_urls_round_trips(urls: list[str], joiner: str) -> None:
    assert split_urls(joiner.join(urls)) == urls
    assert split_urls(f"  {joiner.join(urls)}\n") == urls


def _generated_csv(rows: list[list[str]], joiner: str, *extra: list[str]) -> bytes:
    """One product a row (numbered from 0), its URLs joined by `joiner`; then `extra` rows."""
    products = [[str(i), "P", joiner.join(urls)] for i, urls in enumerate(rows)]
    return csv_bytes([*products, *extra])


@FUZZ
@given(
    rows=st.lists(st.lists(VALID_URL, min_size=1, max_size=4), min_size=1, max_size=5),
    joiner=JOINER,
)
def test_generated_urls_pass_validation_and_come_back_from_iter_rows(
    tmp_path_factory: pytest.TempPathFactory, rows: list[list[str]], joiner: str
) -> None:
    path = write(tmp_path_factory.mktemp("gen"), _generated_csv(rows, joiner))
    summary = validate(path, LIMITS)
    assert summary.images == sum(map(len, rows))
    assert [list(row.urls) for row in iter_rows(path, summary)] == rows


# --- fuzzing validate -------------------------------------------------------------------------

_FRAGMENTS = [
    "https://a.example/1.jpg",
    "http://b/2",
    "ftp://c",
    "HTTP://X",
    "S. No.",
    "Product Name",
    "Input Image Urls",
    ",",
    ", ",
    '"',
    '""',
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "é",
    "\ufeff",
    "\x00",
    "a",
    "1",
    "[::1]",
    ":80",
    "@",
    "#",
]
_CSV_ISH = st.lists(st.sampled_from(_FRAGMENTS), max_size=60).map(
    lambda parts: (HEADER + "".join(parts)).encode("utf-8")
)
_URL_ISH = st.sampled_from(
    [
        "https://a.example/1.jpg",
        "http://b/2",
        "HTTP://X/3",
        "https://x/a,b.jpg",
        "https://x/a b",
        "ftp://c",
        "http://[::1]/p",
        "https://a:80/x",
        "https://u@h/x",
        "http://é.example/é",
        "http://",
        "",
    ]
)
_URL_SEPARATOR = st.sampled_from([",", ", ", "\n", " ", ",,", "\r\n", ", \n", "\t"])
_URL_CELL = st.lists(st.tuples(_URL_ISH, _URL_SEPARATOR), min_size=1, max_size=4).map(
    lambda pairs: "".join(url + separator for url, separator in pairs)
)
_CELL = st.text(' a"\n,é\r', max_size=6)
_ROW = st.tuples(_CELL, _CELL, _URL_CELL).map(list)


def _csv_text(rows: list[list[str]], quote_all: bool, line_end: str) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(
        buffer, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL, lineterminator=line_end
    )
    writer.writerows(rows)
    return (HEADER + buffer.getvalue()).encode("utf-8")


_WRITTEN = st.builds(
    _csv_text, st.lists(_ROW, max_size=5), st.booleans(), st.sampled_from(["\r\n", "\n", "\r"])
)
_BYTES = st.one_of(
    st.binary(max_size=2000),
    _CSV_ISH,
    _WRITTEN,
    st.tuples(_WRITTEN, st.binary(max_size=3)).map(lambda pair: pair[0] + pair[1]),
)


@FUZZ
@given(data=_BYTES)
def test_validate_answers_any_bytes_with_a_summary_or_csv_invalid(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    directory = tmp_path_factory.mktemp("fuzz")
    path = write(directory, data)
    try:
        summary = validate(path, LimitSettings(max_problems=5))
    except CsvInvalid as error:
        assert error.problems
        assert all(p.line >= 1 for p in error.problems)
        return
    # Accepted: pass 2 and the output agree with the summary.
    rows = list(iter_rows(path, summary))
    assert len(rows) == summary.rows
    assert sum(len(row.urls) for row in rows) == summary.images
    for row in rows:
        for url in row.urls:
            parts = urlsplit(url)
            assert parts.scheme in ("http", "https")
            assert parts.hostname
    out = directory / "out.csv"
    write_output(path, out, summary, [])
    with out.open(encoding="utf-8", newline="") as f:
        assert sum(1 for _ in csv.reader(f)) == summary.rows + 1


# --- write_output ---------------------------------------------------------------------------


def _outcomes(
    *pairs: tuple[int, Sequence[ImageOutcome]],
) -> list[tuple[int, Sequence[ImageOutcome]]]:
    return list(pairs)


def test_output_csv_exact(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "\ufeffS. No.,Product Name,Input Image Urls,Brand\n"
        '1,"Shirt, blue","https://a/1.jpg, https://a/2.jpg, https://a/3.jpg",Acme\n'
        "\n"
        "2,Hat,https://a/4.jpg\n"
        '3,"Cap\nred",https://a/5.jpg,"Zed ""Z"""\n',
    )
    summary = validate(path, LIMITS)
    out = tmp_path / "out.csv"
    write_output(
        path,
        out,
        summary,
        _outcomes(
            (
                0,
                [
                    ImageOutcome(0, "https://o/1.jpg", None),
                    ImageOutcome(1, None, "HTTP 404"),
                    ImageOutcome(2, "https://o/3.jpg", None),
                ],
            ),
            (2, [ImageOutcome(0, None, "not an image:\n unknown format")]),
        ),
    )
    assert out.read_bytes().decode("utf-8") == (
        f"S. No.,Product Name,Input Image Urls,Brand,{OUTPUT_URLS_COLUMN},{ERRORS_COLUMN}\r\n"
        '1,"Shirt, blue","https://a/1.jpg, https://a/2.jpg, https://a/3.jpg",Acme,'
        '"https://o/1.jpg, , https://o/3.jpg",#2: HTTP 404\r\n'
        "2,Hat,https://a/4.jpg,,,\r\n"
        '3,"Cap\nred",https://a/5.jpg,"Zed ""Z""",,#1: not an image: unknown format\r\n'
    )
    assert sorted(os.listdir(tmp_path)) == ["in.csv", "out.csv"]


def test_output_keeps_formula_cells_exactly_unless_asked_to_escape_them(tmp_path: Path) -> None:
    path = write(
        tmp_path, "S. No.,Product Name,Input Image Urls,=Note\r\n1,=1+1,https://a/1,@x\r\n"
    )
    out = tmp_path / "out.csv"
    done = [(0, [ImageOutcome(0, "https://o/1", None)])]
    write_output(path, out, validate(path, LIMITS), done)
    assert out.read_bytes().decode("utf-8").splitlines() == [
        f"S. No.,Product Name,Input Image Urls,=Note,{OUTPUT_URLS_COLUMN},{ERRORS_COLUMN}",
        "1,=1+1,https://a/1,@x,https://o/1,",
    ]
    write_output(path, out, validate(path, LIMITS), done, escape_formulas=True)
    assert out.read_bytes().decode("utf-8").splitlines() == [
        f"S. No.,Product Name,Input Image Urls,'=Note,{OUTPUT_URLS_COLUMN},{ERRORS_COLUMN}",
        "1,'=1+1,https://a/1,'@x,https://o/1,",
    ]


def test_output_reuses_existing_result_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Errors,S. No.,Product Name,Input Image Urls,output image URLs\r\n"
        'old,1,A,"https://a/1,https://a/2",https://old/1\r\n',
    )
    out = tmp_path / "out.csv"
    outcomes = [ImageOutcome(0, None, "timeout"), ImageOutcome(1, "https://o/2", None)]
    write_output(path, out, validate(path, LIMITS), [(0, outcomes)])
    assert out.read_bytes().decode("utf-8") == (
        "Errors,S. No.,Product Name,Input Image Urls,output image URLs\r\n"
        '#1: timeout,1,A,"https://a/1,https://a/2",", https://o/2"\r\n'
    )


def test_output_replaces_an_existing_file_atomically(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,A,https://a/1\r\n")
    out = tmp_path / "out.csv"
    out.write_text("old")
    write_output(
        path, out, validate(path, LIMITS), iter([(0, [ImageOutcome(0, "https://o/1", None)])])
    )
    assert out.read_text(encoding="utf-8").splitlines()[1] == "1,A,https://a/1,https://o/1,"


@pytest.mark.parametrize(
    "outcomes",
    [
        [(0, [ImageOutcome(1, "https://o/1", None)])],  # position outside the row
        [(1, []), (0, [])],  # out of order
        [(5, [])],  # no such row
    ],
)
def test_bad_outcomes_leave_no_file_behind(
    tmp_path: Path, outcomes: list[tuple[int, Sequence[ImageOutcome]]]
) -> None:
    path = write(tmp_path, HEADER + "1,A,https://a/1\r\n2,B,https://a/2\r\n")
    summary = validate(path, LIMITS)
    with pytest.raises(ValueError):
        write_output(path, tmp_path / "out.csv", summary, outcomes)
    assert sorted(os.listdir(tmp_path)) == ["in.csv"]


def test_iter_rows_refuses_a_file_that_changed(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,A,https://a/1\r\n")
    summary = validate(path, LIMITS)
    path.write_text("Other,Header\r\n")
    with pytest.raises(ValueError):
        list(iter_rows(path, summary))


# --- validate's on_row: storing rows in the same pass -----------------------------------


@FUZZ
@given(
    rows=st.lists(st.lists(VALID_URL, min_size=1, max_size=4), min_size=1, max_size=5),
    joiner=JOINER,
)
def test_on_row_sees_the_rows_iter_rows_yields(
    tmp_path_factory: pytest.TempPathFactory, rows: list[list[str]], joiner: str
) -> None:
    # A blank row at the end: skipped by both, gets no index.
    path = write(tmp_path_factory.mktemp("gen"), _generated_csv(rows, joiner, ["", "", ""]))
    seen: list[tuple[int, list[str]]] = []
    summary = validate(
        path, LIMITS, on_row=lambda index, cell: seen.append((index, split_urls(cell)))
    )
    assert seen == [(row.index, list(row.urls)) for row in iter_rows(path, summary)]


def test_on_row_stops_at_the_first_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "S. No.,Product Name,Input Image Urls\n"
        "1,A,https://a.example/1.jpg\n"
        "2,B,ftp://a.example/2.jpg\n"
        "3,C,https://a.example/3.jpg\n",
    )
    seen: list[int] = []
    with pytest.raises(CsvInvalid):
        validate(path, LIMITS, on_row=lambda index, cell: seen.append(index))
    assert seen == [0]


def test_accepted_summary_rebuilds_what_validate_found_from_the_header(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "\ufeffColour,Sr No,Input Image URLs,Product Name\n"
        "red,1,https://a.example/1.jpg,A\n"
        'blue,2,"https://a.example/2.jpg, https://a.example/3.jpg",B\n',
    )
    summary = validate(path, LIMITS)
    assert accepted_summary(path, summary.rows, summary.images) == summary
    with pytest.raises(ValueError, match="not a file that validate accepted"):
        accepted_summary(write(tmp_path, "just,some,words\n", "other.csv"), 0, 0)
