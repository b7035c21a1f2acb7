"""csv_input: cases the mutation run showed no test would notice going wrong.

Rows whose first cell is empty, rows longer than the header, URL and host lengths at their
limits, blanks and controls inside URLs, a CRLF split across two reads, a header missing a
column, and the output file: where its temporary file goes and how it is encoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from csvcompress import csv_input
from csvcompress.config import LimitSettings
from csvcompress.csv_input import (
    MAX_URL_LENGTH,
    ImageOutcome,
    iter_rows,
    split_urls,
    validate,
    write_output,
)
from csvcompress.errors import CsvInvalid

LIMITS = LimitSettings()
HEADER = "S. No.,Product Name,Input Image Urls\r\n"
URLS = "Input Image Urls"
NOT_UTF8 = 'not UTF-8 text: save the file as "CSV UTF-8"'


def write(directory: Path, content: str | bytes, name: str = "in.csv") -> Path:
    path = directory / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def problems(path: Path) -> list[tuple[int, str, str]]:
    with pytest.raises(CsvInvalid) as caught:
        validate(path, LIMITS)
    return [(p.line, p.column, p.message) for p in caught.value.problems]


# --- rows -------------------------------------------------------------------------------------


def test_a_row_without_a_serial_number_is_still_a_row(tmp_path: Path) -> None:
    # Spreadsheets leave "S. No." empty often; the row and its images must not vanish.
    path = write(
        tmp_path,
        HEADER
        + ",Shirt,https://cdn.example.com/1.jpg\r\n"
        + " ,Hat,https://cdn.example.com/2.jpg\r\n",
    )
    summary = validate(path, LIMITS)
    assert (summary.rows, summary.images) == (2, 2)
    rows = list(iter_rows(path, summary))
    assert [row.urls for row in rows] == [
        ("https://cdn.example.com/1.jpg",),
        ("https://cdn.example.com/2.jpg",),
    ]
    assert [row.line for row in rows] == [2, 3]


def test_a_row_without_a_serial_number_and_with_a_bad_url_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + ",Shirt,ftp://cdn.example.com/1.jpg\r\n")
    assert problems(path) == [(2, URLS, "not an http(s) URL: 'ftp://cdn.example.com/1.jpg'")]


def test_empty_cells_after_the_last_column_do_not_change_the_image_count(tmp_path: Path) -> None:
    # Excel pads rows with empty cells past the header's last column.
    path = write(
        tmp_path,
        HEADER
        + '1,Shirt,"https://cdn.example.com/1.jpg,https://cdn.example.com/2.jpg",,\r\n'
        + '2,Hat,"https://cdn.example.com/3.jpg, https://cdn.example.com/4.jpg", , \r\n',
    )
    summary = validate(path, LIMITS)
    assert (summary.rows, summary.images) == (2, 4)


def test_a_row_with_more_cells_than_the_header_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,Shirt,https://cdn.example.com/1.jpg,extra\r\n")
    assert problems(path) == [(2, "", "the row has 4 cells but the header has 3")]


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        ("Product Name,Input Image Urls", "S. No."),
        ("S. No.,Input Image Urls", "Product Name"),
    ],
)
def test_a_header_without_the_serial_or_the_name_column_is_refused(
    tmp_path: Path, header: str, missing: str
) -> None:
    path = write(tmp_path, header + "\r\nx,https://cdn.example.com/1.jpg\r\n")
    assert problems(path) == [(1, missing, f"missing column: {missing}")]


# --- URLs ---------------------------------------------------------------------------------------


def _url_of_length(length: int) -> str:
    start = "https://cdn.example.com/"
    return start + "a" * (length - len(start))


def test_a_url_at_the_length_limit_is_accepted_and_one_longer_is_not(tmp_path: Path) -> None:
    at_limit = _url_of_length(MAX_URL_LENGTH)
    over = _url_of_length(MAX_URL_LENGTH + 1)
    accepted = write(tmp_path, HEADER + f"1,Shirt,{at_limit}\r\n", "ok.csv")
    assert validate(accepted, LIMITS).images == 1
    refused = write(tmp_path, HEADER + f"1,Shirt,{over}\r\n", "long.csv")
    [(line, column, message)] = problems(refused)
    assert (line, column) == (2, URLS)
    assert message.startswith(f"URL is longer than {MAX_URL_LENGTH} characters: 'https://")


def test_a_long_url_among_others_is_judged_by_its_own_length(tmp_path: Path) -> None:
    at_limit = _url_of_length(MAX_URL_LENGTH)
    over = _url_of_length(MAX_URL_LENGTH + 1)
    path = write(tmp_path, HEADER + f'1,Shirt,"https://cdn.example.com/1.jpg, {at_limit}"\r\n')
    assert validate(path, LIMITS).images == 2
    path = write(tmp_path, HEADER + f'1,Shirt,"https://cdn.example.com/1.jpg, {over}"\r\n')
    [(_, _, message)] = problems(path)
    assert message.startswith(f"URL is longer than {MAX_URL_LENGTH} characters")


def test_a_host_name_at_the_dns_limit_is_accepted_and_one_longer_is_not(tmp_path: Path) -> None:
    labels = ["a" * 63, "b" * 63, "c" * 63, "d" * 59]  # 63+1+63+1+63+1+59 = 251
    host_251 = ".".join(labels)
    host_253 = host_251 + ".e"
    host_254 = host_251 + ".ef"
    assert (len(host_253), len(host_254)) == (253, 254)
    # A port keeps the URL off the fast path for plain URLs, so the host is parsed.
    ok = write(tmp_path, HEADER + f"1,Shirt,https://{host_253}:8443/x.jpg\r\n", "ok.csv")
    assert validate(ok, LIMITS).images == 1
    refused = write(tmp_path, HEADER + f"1,Shirt,https://{host_254}:8443/x.jpg\r\n", "no.csv")
    [(_, _, message)] = problems(refused)
    assert message.startswith("URL has an invalid host or port: ")


@pytest.mark.parametrize(
    "inside",
    ["\u00a0", "\u2003", "\u3000", "\u0085", "\u009f", "\u007f", "\u2028"],
    ids=["nbsp", "em-space", "ideographic-space", "nel", "c1-control", "del", "line-sep"],
)
def test_a_url_with_a_unicode_blank_or_control_inside_is_refused(
    tmp_path: Path, inside: str
) -> None:
    url = f"https://cdn.example.com/a{inside}b.jpg"
    path = write(tmp_path, HEADER + f'1,Shirt,"{url}"\r\n')
    assert problems(path) == [
        (2, URLS, f"URL contains a space or control character: {url!r}"),
    ]


def test_two_urls_separated_by_a_space_alone_are_one_bad_url(tmp_path: Path) -> None:
    # Only a comma or a line break separates URLs; a space is not a separator a user
    # could rely on, so the cell is refused rather than guessed at.
    cell = "https://cdn.example.com/1.jpg https://cdn.example.com/2.jpg"
    assert split_urls(cell) == [cell]
    path = write(tmp_path, HEADER + f'1,Shirt,"{cell}"\r\n')
    assert problems(path) == [
        (2, URLS, f"URL contains a space or control character: {cell!r}"),
    ]


def test_an_idna_host_is_accepted_and_a_broken_one_is_not(tmp_path: Path) -> None:
    good = write(tmp_path, HEADER + "1,Shirt,https://bücher.example/1.jpg\r\n", "good.csv")
    assert validate(good, LIMITS).images == 1
    bad = write(tmp_path, HEADER + f"1,Shirt,https://{'ü' * 64}.example/1.jpg\r\n", "bad.csv")
    [(_, _, message)] = problems(bad)
    assert message.startswith("URL has an invalid host or port: ")


def test_an_ipv6_host_is_accepted_and_a_malformed_one_is_not(tmp_path: Path) -> None:
    good = write(tmp_path, HEADER + "1,Shirt,https://[2001:db8::1]/1.jpg\r\n", "good.csv")
    assert validate(good, LIMITS).images == 1
    bad = write(tmp_path, HEADER + "1,Shirt,https://[2001:db8::g]/1.jpg\r\n", "bad.csv")
    [(_, _, message)] = problems(bad)
    assert message == "not a valid URL: 'https://[2001:db8::g]/1.jpg'"


# --- where a problem is reported ----------------------------------------------------------------


def test_bad_utf8_after_a_crlf_split_across_two_reads_is_on_the_right_line(
    tmp_path: Path,
) -> None:
    # The scan reads 64 KiB at a time; a CRLF whose CR ends one read and LF starts the next
    # is one line end, not two.
    chunk = csv_input._SCAN_CHUNK_BYTES
    first = HEADER.encode()
    row = b"1,Shirt,https://cdn.example.com/1.jpg"
    padding = chunk - len(first) - len(row) - 1  # the CR is the last byte of the first read
    content = first + row + b"x" * padding + b"\r\n" + b"2,Hat,https://cdn.example.com/\xff\r\n"
    assert content[chunk - 1 : chunk + 1] == b"\r\n"
    path = write(tmp_path, content)
    assert problems(path) == [(3, "", NOT_UTF8)]


# --- the output file ---------------------------------------------------------------------------


def test_the_output_is_written_next_to_its_final_name_and_in_utf8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write(tmp_path, HEADER + "1,Café ☕,https://cdn.example.com/1.jpg\r\n")
    summary = validate(source, LIMITS)
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    output = out_dir / "result.csv"
    renamed: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def replace(src: str, dst: Path) -> None:
        renamed.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    outcome = ImageOutcome(position=0, output_url="https://files.example/1.jpg", error=None)
    write_output(source, output, summary, [(0, [outcome])])
    # A rename within one directory is atomic; across file systems it is not a rename.
    [(temp, final)] = renamed
    assert (temp.parent, final) == (out_dir, output)
    assert output.read_bytes().decode("utf-8") == (
        "S. No.,Product Name,Input Image Urls,Output Image Urls,Errors\r\n"
        "1,Café ☕,https://cdn.example.com/1.jpg,https://files.example/1.jpg,\r\n"
    )
    assert sorted(p.name for p in out_dir.iterdir()) == ["result.csv"]
