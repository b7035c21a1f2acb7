"""csv_input: cases the mutation run showed no test would notice going wrong.

Rows whose first cell is empty, rows longer than the header, URL and host lengths at their
limits, blanks and controls inside URLs, a CRLF split across two reads, a header missing a
column, and the output file: where its temporary file goes and how it is encoded.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
    first = HEADER.encode() + b"1,Shirt"
    url = b",https://cdn.example.com/1.jpg"
    padding = chunk - len(first) - len(url) - 1  # the CR is the last byte of the first read
    content = first + b"x" * padding + url + b"\r\n" + b"2,Hat,https://cdn.example.com/\xff\r\n"
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


# --- more edges -------------------------------------------------------------------------------


def test_a_url_at_the_length_limit_that_needs_parsing_is_accepted(tmp_path: Path) -> None:
    # A port takes the URL off the fast path: the full check must agree on the limit.
    start = "https://cdn.example.com:8443/"
    at_limit = start + "a" * (MAX_URL_LENGTH - len(start))
    path = write(tmp_path, HEADER + f"1,Shirt,{at_limit}\r\n")
    assert validate(path, LIMITS).images == 1


def test_a_value_of_exactly_the_shown_length_is_shown_whole(tmp_path: Path) -> None:
    url = "ftp://cdn.example.com/" + "a" * (csv_input.SHOWN_VALUE_CHARS - 22)
    assert len(url) == csv_input.SHOWN_VALUE_CHARS
    path = write(tmp_path, HEADER + f"1,Shirt,{url}\r\n")
    assert problems(path) == [(2, URLS, f"not an http(s) URL: {url!r}")]


def test_a_nul_on_the_second_line_after_an_empty_first_is_on_line_two(tmp_path: Path) -> None:
    path = write(tmp_path, b"\nS. No.,Product Name\x00,Input Image Urls\r\n")
    assert problems(path) == [(2, "", "not a CSV file: it contains binary data")]


def test_bad_utf8_after_an_empty_first_line_is_on_the_right_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"\n" + HEADER.encode() + b"1,Shirt,https://cdn.example.com/\xff\r\n")
    assert problems(path) == [(3, "", NOT_UTF8)]


def test_bad_utf8_two_reads_after_a_split_crlf_is_on_the_right_line(tmp_path: Path) -> None:
    chunk = csv_input._SCAN_CHUNK_BYTES
    first = HEADER.encode() + b"1,Shirt"
    url = b",https://cdn.example.com/1.jpg"
    content = first + b"x" * (chunk - len(first) - len(url) - 1) + url + b"\r\n"  # CR|LF
    row = b"2,Hat,https://cdn.example.com/2.jpg\r\n"
    content += row * (chunk // len(row) + 1)  # past the end of read 2
    lines = content.count(b"\n")
    content += b"9,Bad,https://cdn.example.com/\xff\r\n"
    path = write(tmp_path, content)
    assert problems(path) == [(lines + 1, "", NOT_UTF8)]


def test_a_fatal_problem_after_the_problem_limit_ends_the_list_with_the_note(
    tmp_path: Path,
) -> None:
    bad_rows = "".join(f"{i},Shirt,ftp://cdn.example.com/{i}.jpg\r\n" for i in range(3))
    # Good rows in between: the bad byte is read long after the three problems are listed.
    good_rows = "".join(f"{i},Hat,https://cdn.example.com/{i}.jpg\r\n" for i in range(1000))
    path = write(tmp_path, (HEADER + bad_rows + good_rows).encode() + b"9,Bad,\xff\r\n")
    with pytest.raises(CsvInvalid) as caught:
        validate(path, LimitSettings(max_problems=3))
    assert [p.message for p in caught.value.problems][-1] == (
        "more problems were found; only the first 3 are listed"
    )


def test_a_hash_sign_names_the_serial_column(tmp_path: Path) -> None:
    path = write(
        tmp_path, "#,Product Name,Input Image Urls\r\n1,Shirt,https://cdn.example.com/1.jpg\r\n"
    )
    assert validate(path, LIMITS).serial_column == 0


def test_the_output_summary_is_refused_for_a_file_validate_would_refuse(tmp_path: Path) -> None:
    path = write(tmp_path, "S. No.,Input Image Urls\r\n1,https://cdn.example.com/1.jpg\r\n")
    with pytest.raises(ValueError, match="is not a file that validate accepted"):
        csv_input.accepted_summary(path, rows=1, images=1)


def test_a_file_swapped_after_validation_is_refused_in_pass_two(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,Shirt,https://cdn.example.com/1.jpg\r\n")
    summary = validate(path, LIMITS)
    write(tmp_path, "Name,Input Image Urls\r\nShirt,https://cdn.example.com/1.jpg\r\n")
    with pytest.raises(ValueError, match="is not the file that was validated: its header differs"):
        list(iter_rows(path, summary))
    write(tmp_path, (HEADER + "1,Shirt,https://cdn.example.com/").encode() + b"\xff\r\n")
    with pytest.raises(CsvInvalid) as caught:
        list(iter_rows(path, summary))
    assert caught.value.message == "the CSV was refused: 1 problem"
    assert [(p.line, p.message) for p in caught.value.problems] == [(2, NOT_UTF8)]


def _output_of(tmp_path: Path, rows: str, outcomes: list[tuple[int, list[ImageOutcome]]]) -> str:
    source = write(tmp_path, HEADER + rows)
    output = tmp_path / "out.csv"
    write_output(source, output, validate(source, LIMITS), outcomes)
    return output.read_bytes().decode("utf-8")


def test_each_failed_image_of_a_row_is_listed_and_one_without_a_reason_says_failed(
    tmp_path: Path,
) -> None:
    rows = '1,Shirt,"https://cdn.example.com/1.jpg, https://cdn.example.com/2.jpg"\r\n'
    outcomes = [ImageOutcome(0, None, "HTTP 404"), ImageOutcome(1, None, None)]
    text = _output_of(tmp_path, rows, [(0, outcomes)])
    assert text.splitlines()[1].endswith(',", ",#1: HTTP 404; #2: failed')


def test_outcomes_that_do_not_fit_the_rows_say_which_row(tmp_path: Path) -> None:
    rows = "1,Shirt,https://cdn.example.com/1.jpg\r\n2,Hat,https://cdn.example.com/2.jpg\r\n"
    done = [ImageOutcome(0, "https://files.example/1.jpg", None)]
    with pytest.raises(ValueError, match=r"^outcomes for row 5, which the CSV does not have$"):
        _output_of(tmp_path, rows, [(0, done), (5, done)])
    with pytest.raises(ValueError, match=r"^outcomes for row 0 are out of order or unknown$"):
        _output_of(tmp_path, rows, [(0, done), (0, done)])


def test_a_line_break_inside_a_product_name_is_kept_in_the_output(tmp_path: Path) -> None:
    rows = '1,"Shirt\r\nblue",https://cdn.example.com/1.jpg\r\n'
    done = [ImageOutcome(0, "https://files.example/1.jpg", None)]
    text = _output_of(tmp_path, rows, [(0, done)])
    assert (
        '1,"Shirt\r\nblue",https://cdn.example.com/1.jpg,https://files.example/1.jpg,\r\n' in text
    )


def test_the_output_is_utf8_even_under_a_c_locale(tmp_path: Path) -> None:
    # A service started with a bare environment (LC_ALL=C, no locale coercion, no UTF-8
    # mode) must write the same bytes as anywhere else: "Café" as UTF-8.
    source = write(tmp_path, HEADER + "1,Café ☕,https://cdn.example.com/1.jpg\r\n")
    done = [ImageOutcome(0, "https://files.example/1.jpg", None)]
    here = tmp_path / "here.csv"
    write_output(source, here, validate(source, LIMITS), [(0, done)])
    script = (
        "import sys; from pathlib import Path\n"
        "from csvcompress.config import LimitSettings\n"
        "from csvcompress.csv_input import ImageOutcome, validate, write_output\n"
        "src, out = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "done = [ImageOutcome(0, 'https://files.example/1.jpg', None)]\n"
        "write_output(src, out, validate(src, LimitSettings()), [(0, done)])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONUTF8"))}
    env |= {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    there = tmp_path / "there.csv"
    subprocess.run(
        [sys.executable, "-c", script, str(source), str(there)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        check=True,
    )
    assert "Café ☕" in there.read_bytes().decode("utf-8")
    assert there.read_bytes() == here.read_bytes()


def test_a_file_changed_to_bad_utf8_before_its_output_is_written_is_refused(
    tmp_path: Path,
) -> None:
    source = write(tmp_path, HEADER + "1,Shirt,https://cdn.example.com/1.jpg\r\n")
    summary = validate(source, LIMITS)
    write(tmp_path, (HEADER + "1,Shirt,https://cdn.example.com/").encode() + b"\xff\r\n")
    with pytest.raises(CsvInvalid) as caught:
        write_output(source, tmp_path / "out.csv", summary, [])
    assert [(p.line, p.message) for p in caught.value.problems] == [(2, NOT_UTF8)]
    assert not (tmp_path / "out.csv").exists()


def test_a_carriage_return_alone_separates_urls_as_a_line_break_does() -> None:
    # Old Mac line ends inside a cell: "\r" is a line break too.
    cell = "https://cdn.example.com/1.jpg\rhttps://cdn.example.com/2.jpg"
    assert split_urls(cell) == ["https://cdn.example.com/1.jpg", "https://cdn.example.com/2.jpg"]


def _cell_of_length(length: int) -> str:
    urls, size = [], 0
    while length - size > 80:  # room for the last URL, padded to the exact length
        url = f"https://cdn.example.com/p/{len(urls):06d}.jpg"
        urls.append(url)
        size += len(url) + 1
    cell = ",".join(urls) + ","
    last = "https://cdn.example.com/q/"
    return cell + last + "a" * (length - len(cell) - len(last))


def test_a_url_cell_at_its_length_limit_is_accepted_and_one_longer_is_not(
    tmp_path: Path,
) -> None:
    limit = csv_input.MAX_URL_CELL_CHARS
    at_limit, over = _cell_of_length(limit), _cell_of_length(limit + 1)
    assert (len(at_limit), len(over)) == (limit, limit + 1)
    ok = write(tmp_path, HEADER + f'1,Shirt,"{at_limit}"\r\n', "ok.csv")
    assert validate(ok, LIMITS).images == at_limit.count(",") + 1
    refused = write(tmp_path, HEADER + f'1,Shirt,"{over}"\r\n', "no.csv")
    assert problems(refused) == [(2, URLS, f"the URL cell is longer than {limit} characters")]


def test_a_refused_long_cell_counts_as_one_image_not_as_the_image_limit(tmp_path: Path) -> None:
    limit = csv_input.MAX_URL_CELL_CHARS
    path = write(tmp_path, HEADER + f'1,Shirt,"{_cell_of_length(limit + 1)}"\r\n')
    with pytest.raises(CsvInvalid) as caught:
        validate(path, LimitSettings(max_images=1))
    assert [p.message for p in caught.value.problems] == [
        f"the URL cell is longer than {limit} characters"
    ]


def test_a_header_with_an_extra_column_named_by_a_url_is_still_a_header(tmp_path: Path) -> None:
    header = "S. No.,Product Name,Input Image Urls,https://shop.example.com/catalogue\r\n"
    path = write(tmp_path, header + "1,Shirt,https://cdn.example.com/1.jpg,x\r\n")
    assert validate(path, LIMITS).rows == 1


def test_a_nul_far_into_the_file_comes_after_the_problems_before_it(tmp_path: Path) -> None:
    good_rows = "".join(f"{i},Hat,https://cdn.example.com/{i}.jpg\r\n" for i in range(400))
    content = HEADER + "1,Shirt,ftp://cdn.example.com/1.jpg\r\n" + good_rows
    assert len(content) > 8192  # past the first look for binary data
    path = write(tmp_path, content.encode() + b"9,Bad\x00,https://cdn.example.com/9.jpg\r\n")
    assert problems(path) == [
        (2, URLS, "not an http(s) URL: 'ftp://cdn.example.com/1.jpg'"),
        (403, "", "not a CSV file: it contains binary data"),
    ]


def test_a_one_character_file_is_a_header_without_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "x")
    assert problems(path) == [
        (1, "S. No.", "missing column: S. No."),
        (1, "Product Name", "missing column: Product Name"),
        (1, URLS, f"missing column: {URLS}"),
    ]


def test_the_output_summary_of_an_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a file that validate accepted"):
        csv_input.accepted_summary(write(tmp_path, ""), rows=0, images=0)


def test_a_file_emptied_after_validation_is_refused_in_pass_two(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,Shirt,https://cdn.example.com/1.jpg\r\n")
    summary = validate(path, LIMITS)
    write(tmp_path, "")
    with pytest.raises(ValueError, match="is not the file that was validated"):
        list(iter_rows(path, summary))


def test_an_outcome_for_an_image_the_row_does_not_have_is_refused(tmp_path: Path) -> None:
    rows = "1,Shirt,https://cdn.example.com/1.jpg\r\n"
    stray = [ImageOutcome(1, "https://files.example/2.jpg", None)]
    with pytest.raises(ValueError, match=r"^image position 1 outside a row of 1 URLs$"):
        _output_of(tmp_path, rows, [(0, stray)])
