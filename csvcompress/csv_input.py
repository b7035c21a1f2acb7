"""Read and validate an uploaded CSV; write the output CSV.

The upload is read twice, both times streaming: `validate` (pass 1) checks
everything and either returns a `CsvSummary` or raises `CsvInvalid` listing
the problems; `iter_rows` (pass 2) yields the image URLs of each row of a file
that `validate` accepted. `write_output` streams the input once more and writes
it back with two columns appended.

Reading rules (one place decides them, `_records`):

* UTF-8 with or without a BOM, CRLF, LF or CR line ends, RFC 4180 quoting
  (a quoted cell may hold commas, quotes and line breaks). Leading spaces are
  part of a cell, as RFC 4180 says.
* Rows whose cells are all blank are skipped everywhere: they are not data
  rows, get no index and are not written to the output.
* A row shorter than the header has its missing cells read as empty; a row
  longer than the header is refused, unless the extra cells are all blank
  (they are then dropped).
* The first non-blank row is the header. Header cells are matched ignoring
  case, spaces and punctuation ("#" counts as "No"), so "S. No.", "Sr No",
  "S#" and "Serial Number" all name the serial column. The serial, product
  name and URL columns are required; two URL columns are refused, of two
  serial or name columns the first is taken. Other columns are carried through.
* A URL cell longer than MAX_URL_CELL_CHARS is refused without being split.
* A line longer than MAX_LINE_CHARS, a cell longer than MAX_CELL_CHARS, a
  NUL byte, bytes that are not UTF-8, or broken quoting end the scan: what
  follows such a point cannot be trusted, so no more problems are looked for.

How a URL cell is split (`split_urls`): URLs are separated by commas and/or
line breaks; blanks and commas around them are ignored. A comma with no blank
next to it only separates when the text after it starts a new URL
(``scheme://``), so a comma inside a URL stays part of it:
``https://res.cloudinary.com/x/w_100,h_100/a.jpg`` is one URL. Consequently a
URL cannot end with a comma, and a URL that contains ",scheme://" is split
there. Spaces and tabs alone do not separate: ``https://x/a b.jpg`` is one
value, refused because it contains a space.

A URL passes when it is at most MAX_URL_LENGTH long, holds no blank or control
character, starts with http:// or https:// (any case) and has a host: a name
of dot-separated letters, digits, "-" and "_" (IDNA for other letters), an
IPv4 or a bracketed IPv6 address; a port, if any, 1-65535. Nothing is
resolved: which addresses may be fetched is decided when connecting.

The output CSV is the input header plus "Output Image Urls" and "Errors"; an
input that already has columns named like those (matched like the others)
gets their values replaced in place instead. The output URLs keep the input
order, joined by ", ", with an empty slot for a failed image
("https://a/1.jpg, , https://a/3.jpg"); "Errors" holds "#N: reason" for each
failed image (N counting from 1), joined by "; ".

The functions here block (file I/O); async callers run them in an executor.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import IO, NoReturn
from urllib.parse import urlsplit

from csvcompress.config import LimitSettings
from csvcompress.errors import CsvInvalid, Problem

log = logging.getLogger(__name__)

__all__ = [
    "ERRORS_COLUMN",
    "MAX_CELL_CHARS",
    "MAX_COLUMNS",
    "MAX_LINE_CHARS",
    "MAX_URL_CELL_CHARS",
    "MAX_URL_LENGTH",
    "OUTPUT_URLS_COLUMN",
    "CsvRow",
    "CsvSummary",
    "ImageOutcome",
    "accepted_summary",
    "iter_rows",
    "split_urls",
    "validate",
    "write_output",
]

OUTPUT_URLS_COLUMN = "Output Image Urls"
ERRORS_COLUMN = "Errors"

MAX_COLUMNS = 1000
# Both in characters. The cell cap is the csv module's field_size_limit; the
# line cap bounds what one read pulls into memory, so a 50 MB line of garbage
# is refused after reading 4 MiB of it.
MAX_CELL_CHARS = 1024 * 1024
MAX_LINE_CHARS = 4 * 1024 * 1024
MAX_URL_LENGTH = 2048
# A URL cell longer than this is refused without being split (hundreds of URLs).
MAX_URL_CELL_CHARS = 64 * 1024
# How much of an offending value a problem message shows.
SHOWN_VALUE_CHARS = 100
# Bytes looked at before decoding, to tell binary files and UTF-16 apart.
_SNIFF_BYTES = 8192
_SCAN_CHUNK_BYTES = 64 * 1024

# Names a problem uses for the columns we look for.
SERIAL_NAME = "S. No."
PRODUCT_NAME = "Product Name"
URLS_NAME = "Input Image Urls"

_SERIAL_KEYS = frozenset(
    {
        "no",
        "num",
        "number",
        "sn",
        "sno",
        "snum",
        "snumber",
        "srno",
        "srnum",
        "srnumber",
        "slno",
        "slnum",
        "slnumber",
        "serial",
        "serialno",
        "serialnum",
        "serialnumber",
    }
)
_NAME_KEYS = frozenset({"productname", "product", "productnames", "producttitle", "name"})
_URL_KEYS = frozenset(
    {
        "inputimageurls",
        "inputimageurl",
        "inputurls",
        "inputurl",
        "inputimages",
        "inputimagelinks",
        "imageurls",
        "imageurl",
        "imagelinks",
        "images",
        "urls",
    }
)
_ROLE_BY_KEY = {
    **dict.fromkeys(_SERIAL_KEYS, SERIAL_NAME),
    **dict.fromkeys(_NAME_KEYS, PRODUCT_NAME),
    **dict.fromkeys(_URL_KEYS, URLS_NAME),
}
_OUTPUT_URLS_KEYS = frozenset({"outputimageurls", "outputimageurl", "outputurls"})
_ERRORS_KEYS = frozenset({"errors", "error"})

_NON_ALNUM = re.compile(r"[^0-9a-z]+")

# --- URL splitting and checking ---------------------------------------------------

_HTTP_PREFIXES = ("https://", "http://")
# What a URL cell is split on (see the module docstring): a maximal run of
# blanks and commas that holds a line break or a comma next to a blank, or that
# is all commas and comes right before "scheme://". Put by how the run starts:
# with commas, then a blank or a scheme; with a line break; with a blank, then a
# comma or line break after more blanks. The lookbehinds let a match start only
# on the first character of a run, which keeps the split linear.
_SEPARATOR = re.compile(
    r",(?<![\s,],),*+(?=\s|[A-Za-z][A-Za-z0-9+.\-]*://)[\s,]*+"
    r"|\s(?<![\s,]\s)(?:(?<=[\r\n])|(?=[^\S\r\n]*+[,\r\n]))[\s,]*+"
)
# Blanks (what str.isspace() and the \s of `re` call one) and the comma.
_BLANKS_AND_COMMA = "," + "".join(c for c in map(chr, range(0x3001)) if c.isspace())

# Characters no URL may hold: every blank (what str.isspace() and the \s of `re`
# call one) and every control character.
_BAD_CHARS = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_BAD_CHAR = re.compile(f"[{_BAD_CHARS}]")
# Dot-separated labels of letters, digits, "-" and "_" (seen in real host names);
# an IPv4 address matches too. DNS decides the rest.
_HOST_NAME = re.compile(r"(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?")
_MAX_HOST_LENGTH = 253
_HTTP_START = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://")
# A URL cell that is plainly fine: http(s) URLs with a host name or IPv4 address,
# no user or port, and only printable ASCII other than comma and space after the
# host, separated by commas. One match checks a whole cell, so the common case
# costs no Python per URL; anything else is split and each URL parsed.
# Possessive repeats (never give back) keep it fast; a host with a trailing dot
# misses this path, which is fine.
_PLAIN_URL = r"[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9_-]++\.)*+[A-Za-z0-9_-]++(?:[/?#][!-+\--~]*+)?"
_PLAIN_URL_RE = re.compile(_PLAIN_URL)
_PLAIN_CELL = re.compile(rf"[ \t]*+{_PLAIN_URL}(?:[ \t]*+,[ \t]*+{_PLAIN_URL})*+[ \t]*+")


def split_urls(cell: str) -> list[str]:
    """The URLs in a URL cell, in order; [] for a blank cell. See the module docstring."""
    if "\n" not in cell and "\r" not in cell:
        # Common case, same result: every comma separates as every piece starts a URL.
        pieces = cell.split(",")
        if all(map(str.startswith, map(str.lstrip, pieces), repeat(_HTTP_PREFIXES))):
            return list(map(str.strip, pieces))
    text = cell.strip(_BLANKS_AND_COMMA)
    return _SEPARATOR.split(text) if text else []


def _url_problem(url: str) -> str | None:
    """Why `url` is not an absolute http(s) URL we can fetch, or None when it is."""
    if len(url) > MAX_URL_LENGTH:
        return f"URL is longer than {MAX_URL_LENGTH} characters: {_shown(url)}"
    if _BAD_CHAR.search(url):
        return f"URL contains a space or control character: {_shown(url)}"
    if not _HTTP_START.match(url):
        return f"not an http(s) URL: {_shown(url)}"
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return f"not a valid URL: {_shown(url)}"
    if not host:
        return f"URL has no host: {_shown(url)}"
    if not _valid_host(host) or port == 0:
        return f"URL has an invalid host or port: {_shown(url)}"
    return None


def _valid_host(host: str) -> bool:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return False
    return len(host) <= _MAX_HOST_LENGTH and _HOST_NAME.fullmatch(host) is not None


def _shown(value: str) -> str:
    if len(value) > SHOWN_VALUE_CHARS:
        value = value[:SHOWN_VALUE_CHARS] + "…"
    return repr(value)


# --- results ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvSummary:
    header: tuple[str, ...]
    """The header cells as given (BOM stripped)."""
    url_column: int
    serial_column: int | None
    name_column: int | None
    rows: int
    """Data rows (blank rows not counted)."""
    images: int
    """URL occurrences in all rows."""


# validate's on_row: (0-based data row index, the row's URL cell).
RowHook = Callable[[int, str], None]


@dataclass(frozen=True, slots=True)
class CsvRow:
    index: int
    """0-based data row number."""
    line: int
    """1-based line of the file where this row starts (the header is usually line 1)."""
    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    position: int
    """0-based position of the image in its row's URL cell."""
    output_url: str | None
    """None when the image failed."""
    error: str | None


# --- reading ------------------------------------------------------------------------


class _Fatal(Exception):
    """The file cannot be read past this point."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


BINARY = "not a CSV file: it contains binary data"
NOT_UTF8 = 'not UTF-8 text: save the file as "CSV UTF-8"'
UTF16 = 'the file is UTF-16 text: save it as "CSV UTF-8"'


def _open_text(path: Path) -> IO[str]:
    return path.open(encoding="utf-8-sig", errors="strict", newline="")


def _sniff(path: Path) -> Problem | None:
    """Refuse binary and UTF-16 files before decoding them as UTF-8."""
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return Problem(1, "", UTF16)
    nul = head.find(b"\x00")
    if nul >= 0:
        return Problem(1 + _count_breaks(head[:nul], False), "", BINARY)
    return None


def _count_breaks(data: bytes, after_cr: bool) -> int:
    """Line ends (CRLF, LF or CR) in `data`; `after_cr` when the bytes before it ended with CR."""
    count = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
    if after_cr and data.startswith(b"\n"):
        count -= 1
    return count


def _line_of_bad_utf8(path: Path) -> int:
    """1-based line holding the first byte that is not UTF-8 (the text decoder reads ahead)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, after_cr = 1, False
    with path.open("rb") as f:
        while chunk := f.read(_SCAN_CHUNK_BYTES):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's few pending bytes (never a line end) + chunk.
                return line + _count_breaks(exc.object[: exc.start], after_cr)
            line += _count_breaks(chunk, after_cr)
            after_cr = chunk.endswith(b"\r")
    return line


def _lines(f: IO[str], path: Path) -> Iterator[str]:
    """The physical lines of `f`, each at most MAX_LINE_CHARS long; refuses NUL and non-UTF-8."""
    number = 0
    while True:
        try:
            line = f.readline(MAX_LINE_CHARS)
        except UnicodeDecodeError:
            raise _Fatal(Problem(_line_of_bad_utf8(path), "", NOT_UTF8)) from None
        if not line:
            return
        number += 1
        if len(line) >= MAX_LINE_CHARS:
            message = f"a line is longer than {MAX_LINE_CHARS} characters"
            raise _Fatal(Problem(number, "", message))
        if "\x00" in line:
            raise _Fatal(Problem(number, "", BINARY))
        yield line


def _records(f: IO[str], path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line where it starts, cells) for every non-blank record, the header first."""
    csv.field_size_limit(MAX_CELL_CHARS)
    reader = csv.reader(_lines(f, path), strict=True)
    last = 0
    try:
        for row in reader:
            start, last = last + 1, reader.line_num
            # The first test settles almost every row.
            if (row and row[0] and not row[0].isspace()) or not _is_blank(row):
                yield start, row
    except csv.Error as exc:
        raise _Fatal(_parse_problem(str(exc), last + 1, reader.line_num)) from None


def _parse_problem(error: str, start: int, current: int) -> Problem:
    if error.startswith("field larger than field limit"):
        return Problem(start, "", f"a cell is longer than {MAX_CELL_CHARS} characters")
    if error == "unexpected end of data":
        return Problem(start, "", 'a quoted cell is never closed (a " is missing)')
    if error.endswith("expected after '\"'"):
        message = 'bad quoting: a closing " must be followed by a comma or the end of the line'
        return Problem(current, "", message)
    return Problem(current, "", f"the CSV cannot be parsed: {error}")


def _is_blank(row: list[str]) -> bool:
    return not any(cell and not cell.isspace() for cell in row)


def _key(cell: str) -> str:
    return _NON_ALNUM.sub("", cell.casefold().replace("#", "no"))


# --- pass 1 ---------------------------------------------------------------------------


class _Stop(Exception):
    """Enough problems have been found."""


class _OverLimit(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _Report:
    """Collects problems; stops the scan once one more than `limit` has been found."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.problems: list[Problem] = []
        self.omitted = False

    def add(self, line: int, column: str, message: str) -> None:
        if len(self.problems) >= self.limit:
            self.omitted = True
            note = f"more problems were found; only the first {self.limit} are listed"
            self.problems.append(Problem(line, "", note))
            raise _Stop
        self.problems.append(Problem(line, column, message))

    def refusal(self) -> CsvInvalid:
        count = len(self.problems)
        if self.omitted:
            summary = f"more than {self.limit} problems"
        else:
            summary = f"{count} problem" + ("" if count == 1 else "s")
        return CsvInvalid(f"the CSV was refused: {summary}", problems=self.problems)


@dataclass(frozen=True)
class _Columns:
    line: int
    header: tuple[str, ...]
    url: int
    serial: int | None
    name: int | None

    def summary(self, rows: int, images: int) -> CsvSummary:
        return CsvSummary(
            header=self.header,
            url_column=self.url,
            serial_column=self.serial,
            name_column=self.name,
            rows=rows,
            images=images,
        )


def validate(path: Path, limits: LimitSettings, on_row: RowHook | None = None) -> CsvSummary:
    """Pass 1: check the whole file, streaming; the summary, or CsvInvalid listing the problems.

    At most `limits.max_problems` problems are listed, then one saying more were
    found. Too many rows or images raise at once, with a message naming the limit.

    `on_row(index, url_cell)` is called for each data row, in order, as long as no
    problem has been found: a caller can store the rows in the same pass (split the
    cell with `split_urls`, as `iter_rows` does) and drop them if this raises.
    """
    report = _Report(limits.max_problems)
    summary: CsvSummary | None = None
    try:
        summary = _scan(path, limits, report, on_row)
    except _Stop:
        pass
    except _Fatal as exc:
        _add_last(report, exc.problem)
    except _OverLimit as exc:
        raise CsvInvalid(exc.problem.message, problems=[*report.problems, exc.problem]) from None
    if report.problems or summary is None:
        raise report.refusal()
    return summary


def _add_last(report: _Report, problem: Problem) -> None:
    with contextlib.suppress(_Stop):
        report.add(problem.line, problem.column, problem.message)


def _scan(
    path: Path, limits: LimitSettings, report: _Report, on_row: RowHook | None
) -> CsvSummary | None:
    if path.stat().st_size == 0:
        report.add(1, "", "the file is empty")
        return None
    sniffed = _sniff(path)
    if sniffed is not None:
        raise _Fatal(sniffed)
    with _open_text(path) as f:
        records = _records(f, path)
        first = next(records, None)
        if first is None:
            report.add(1, "", "the file is empty")
            return None
        columns = _find_columns(*first, report)
        if columns is None:
            return None
        rows, images = _scan_rows(records, columns, limits, report, on_row)
    if rows == 0:
        report.add(columns.line + 1, "", "the CSV has no data rows")
    return columns.summary(rows, images)


def accepted_summary(path: Path, rows: int, images: int) -> CsvSummary:
    """The summary of a file `validate` accepted before, rebuilt from its header alone.

    For writing the output CSV of a stored upload: a second full validation of a
    100,000-row file cost ~0.4 s of GIL-holding Python while images were being
    compressed. `rows` and `images` are the counts validate gave at the time.
    """
    with _open_text(path) as f:
        first = next(_records(f, path), None)
    report = _Report(MAX_COLUMNS)
    columns = _find_columns(*first, report) if first is not None else None
    if columns is None or report.problems:
        raise ValueError(f"{path} is not a file that validate accepted")
    return columns.summary(rows, images)


def _find_columns(line: int, header: list[str], report: _Report) -> _Columns | None:
    """Locate the columns we need; None when the URL column cannot be found."""
    if len(header) > MAX_COLUMNS:
        raise _Fatal(Problem(line, "", f"too many columns ({len(header)} > {MAX_COLUMNS})"))
    found: dict[str, list[int]] = {SERIAL_NAME: [], PRODUCT_NAME: [], URLS_NAME: []}
    for i, cell in enumerate(header):
        role = _ROLE_BY_KEY.get(_key(cell))
        if role is not None:
            found[role].append(i)
    hint = _header_hint(header) if not found[URLS_NAME] else None
    if hint is not None:
        report.add(line, "", hint)
        return None
    for name, indexes in found.items():
        if not indexes:
            report.add(line, name, f"missing column: {name}")
    # Only the URL column must be unambiguous; of the others the first is taken.
    for extra in found[URLS_NAME][1:]:
        report.add(line, header[extra], f"duplicate column: {URLS_NAME}")
    if not found[URLS_NAME]:
        return None
    serial, product = found[SERIAL_NAME], found[PRODUCT_NAME]
    return _Columns(
        line=line,
        header=tuple(header),
        url=found[URLS_NAME][0],
        serial=serial[0] if serial else None,
        name=product[0] if product else None,
    )


def _header_hint(header: list[str]) -> str | None:
    """A better explanation than "missing column" when the first row is clearly no header."""
    if len(header) == 1:
        for separator, name in ((";", "semicolons"), ("\t", "tabs")):
            if separator in header[0]:
                return f"the columns must be separated by commas, not {name}"
    if any(_HTTP_START.match(cell.strip()) for cell in header):
        expected = ", ".join((SERIAL_NAME, PRODUCT_NAME, URLS_NAME))
        return f"the first row must be the header naming the columns: {expected}"
    return None


def _scan_rows(
    records: Iterator[tuple[int, list[str]]],
    columns: _Columns,
    limits: LimitSettings,
    report: _Report,
    on_row: RowHook | None = None,
) -> tuple[int, int]:
    """Check every data row; (rows, images)."""
    rows = images = 0
    width, url_at = len(columns.header), columns.url
    url_name = columns.header[url_at]
    plain = _PLAIN_CELL.fullmatch
    for line, row in records:
        rows += 1
        if rows > limits.max_rows:
            _over(line, "", f"too many rows: the limit is {limits.max_rows}")
        # The common row, checked inline: not too long, a plainly fine URL cell.
        cell = row[url_at] if url_at < len(row) else ""
        if len(row) <= width and len(cell) <= MAX_URL_LENGTH and plain(cell):
            images += cell.count(",") + 1
        else:
            images += _check_row(line, row, columns, report)
        if on_row is not None and not report.problems:
            on_row(rows - 1, cell)
        if images > limits.max_images:
            _over(line, url_name, f"too many images: the limit is {limits.max_images}")
    return rows, images


def _over(line: int, column: str, message: str) -> NoReturn:
    raise _OverLimit(Problem(line, column, message))


def _check_row(line: int, row: list[str], columns: _Columns, report: _Report) -> int:
    """Report what is wrong with one data row; the number of URLs in it."""
    width = len(columns.header)
    if len(row) > width and not _is_blank(row[width:]):
        report.add(line, "", f"the row has {len(row)} cells but the header has {width}")
    url_name = columns.header[columns.url]
    cell = row[columns.url] if columns.url < len(row) else ""
    if len(cell) <= MAX_URL_LENGTH and _PLAIN_CELL.fullmatch(cell):
        return cell.count(",") + 1
    if len(cell) > MAX_URL_CELL_CHARS:
        report.add(line, url_name, f"the URL cell is longer than {MAX_URL_CELL_CHARS} characters")
        return 1
    urls = split_urls(cell)
    if not urls:
        report.add(line, url_name, "the URL cell is empty")
    for url in urls:
        if len(url) <= MAX_URL_LENGTH and _PLAIN_URL_RE.fullmatch(url):
            continue
        problem = _url_problem(url)
        if problem is not None:
            report.add(line, url_name, problem)
    return len(urls)


# --- pass 2 and output -------------------------------------------------------------


def _data_rows(
    f: IO[str], path: Path, header: Sequence[str]
) -> Iterator[tuple[int, int, list[str]]]:
    """(index, line, cells) of each data row of a file validate() accepted."""
    records = _records(f, path)
    try:
        first = next(records, None)
        if first is None or tuple(first[1]) != tuple(header):
            raise ValueError(f"{path} is not the file that was validated: its header differs")
        for index, (line, row) in enumerate(records):
            yield index, line, row
    except _Fatal as exc:
        raise CsvInvalid("the CSV was refused: 1 problem", problems=[exc.problem]) from None


def iter_rows(path: Path, summary: CsvSummary) -> Iterator[CsvRow]:
    """Pass 2, streaming: the URLs of each data row of a file `validate` accepted."""
    column = summary.url_column
    with _open_text(path) as f:
        for index, line, row in _data_rows(f, path, summary.header):
            cell = row[column] if column < len(row) else ""
            yield CsvRow(index=index, line=line, urls=tuple(split_urls(cell)))


def _output_header(header: tuple[str, ...]) -> tuple[list[str], int, int]:
    """The output header and where the two result columns go.

    Columns the input already has with those names (matched like the others)
    are reused, so their values are replaced rather than duplicated.
    """
    out = list(header)
    keys = [_key(cell) for cell in header]
    urls_at = next((i for i, k in enumerate(keys) if k in _OUTPUT_URLS_KEYS), None)
    errors_at = next((i for i, k in enumerate(keys) if k in _ERRORS_KEYS), None)
    if urls_at is None:
        urls_at = len(out)
        out.append(OUTPUT_URLS_COLUMN)
    if errors_at is None:
        errors_at = len(out)
        out.append(ERRORS_COLUMN)
    return out, urls_at, errors_at


def _result_cells(slots: int, outcomes: Sequence[ImageOutcome]) -> tuple[str, str]:
    """The "Output Image Urls" and "Errors" cells of a row with `slots` input URLs."""
    urls = [""] * slots
    errors = []
    for outcome in outcomes:
        if not 0 <= outcome.position < slots:
            raise ValueError(f"image position {outcome.position} outside a row of {slots} URLs")
        if outcome.output_url is not None:
            urls[outcome.position] = outcome.output_url
        else:
            reason = " ".join((outcome.error or "failed").split())
            errors.append(f"#{outcome.position + 1}: {reason}")
    return ", ".join(urls), "; ".join(errors)


class _Outcomes:
    """Walks the (row index, outcomes) pairs alongside the rows."""

    def __init__(self, pairs: Iterable[tuple[int, Sequence[ImageOutcome]]]) -> None:
        self._pairs = iter(pairs)
        self._next = next(self._pairs, None)

    def take(self, index: int) -> Sequence[ImageOutcome]:
        if self._next is None or self._next[0] > index:
            return ()
        if self._next[0] < index:
            raise ValueError(f"outcomes for row {self._next[0]} are out of order or unknown")
        found = self._next[1]
        self._next = next(self._pairs, None)
        return found

    def finish(self) -> None:
        if self._next is not None:
            raise ValueError(f"outcomes for row {self._next[0]}, which the CSV does not have")


# What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(cell: str) -> str:
    """`cell` with a leading ' if a spreadsheet would run it as a formula."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def _escape_all(cells: list[str]) -> list[str]:
    return [escape_formula(cell) for cell in cells]


def _unchanged(cells: list[str]) -> list[str]:
    return cells


def write_output(
    input_path: Path,
    output_path: Path,
    summary: CsvSummary,
    outcomes: Iterable[tuple[int, Sequence[ImageOutcome]]],
    *,
    escape_formulas: bool = False,
) -> None:
    """Write the input rows with the "Output Image Urls" and "Errors" cells, atomically.

    With `escape_formulas`, every cell a spreadsheet would take for a formula gets a
    leading ' (see `escape_formula`).

    `outcomes` yields (row index, that row's outcomes sorted by position) in row
    order; a row it skips gets empty cells. The file is UTF-8 without BOM, CRLF
    line ends, minimal quoting. It is written to a temporary file next to
    `output_path`, then renamed over it.
    """
    header, urls_at, errors_at = _output_header(summary.header)
    width = len(summary.header)
    pending = _Outcomes(outcomes)
    fd, temp_name = tempfile.mkstemp(
        dir=output_path.parent, prefix=f".{output_path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out, _open_text(input_path) as f:
            writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
            escape = _escape_all if escape_formulas else _unchanged
            writer.writerow(escape(header))
            for index, _line, row in _data_rows(f, input_path, summary.header):
                cells = row[:width] + [""] * (len(header) - min(len(row), width))
                slots = len(split_urls(cells[summary.url_column]))
                cells[urls_at], cells[errors_at] = _result_cells(slots, pending.take(index))
                writer.writerow(escape(cells))
            pending.finish()
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, output_path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    log.debug("wrote %s (%d rows)", output_path, summary.rows)
