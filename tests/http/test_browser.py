"""The browser pages end to end in headless Chromium (Debian's package, driven by Playwright).

Upload with the file picker and by drag and drop, a refused CSV shown as a list, an
upload over the size limit, live progress, the finished page and the download, at
desktop and phone widths. With CSVCOMPRESS_SCREENSHOTS=1 (`make screenshots`) the
screenshots are written to docs/ for the README; otherwise to the test's tmp dir.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import images
from tests.conftest import ServiceFactory, csv_bytes
from tests.servers import Origin, Receiver

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Each image of the job is held back a little longer than the last, so progress is visible.
DELAY_STEP = 0.45
IMAGES = 8

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
)
playwright_api = pytest.importorskip("playwright.async_api")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    if os.environ.get("CSVCOMPRESS_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        return DOCS
    return tmp_path


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        await chromium.close()


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


class Requests:
    """Every URL a page asked for."""

    def __init__(self, page: Any) -> None:
        self.urls: list[str] = []
        page.on("request", lambda r: self.urls.append(r.url))


async def _thumbnail_sizes(page: Any) -> list[tuple[int, int]]:
    """The pixel size of every thumbnail on the page, each loaded first."""
    sizes = await page.evaluate(
        """() => Promise.all([...document.querySelectorAll("img.thumb")].map((img) => {
             img.loading = "eager";
             const size = () => [img.naturalWidth, img.naturalHeight];
             if (img.complete) return size();
             return new Promise((done) => { img.onload = img.onerror = () => done(size()); });
           }))"""
    )
    return [tuple(size) for size in sizes]


async def _screenshot(page: Any, path: Path) -> None:
    """A full-page screenshot with every lazy image loaded."""
    await page.evaluate(
        """() => Promise.all([...document.images].map((img) => {
             img.loading = "eager";
             if (img.complete) return null;
             return new Promise((done) => { img.onload = img.onerror = done; });
           }))"""
    )
    await page.screenshot(path=str(path), full_page=True)


def _job(origin: Origin) -> tuple[bytes, list[str], str]:
    """A CSV of IMAGES slow images in 4 rows plus one that fails; its URLs; the failing URL."""

    urls = [
        origin.add(f"p{n}.jpg", images.photo_jpeg(240, 180, seed=n), delay=DELAY_STEP * (n + 1))
        for n in range(IMAGES)
    ]
    missing = f"{origin.url}/gone.jpg"
    rows = [[str(r + 1), f"Product {r + 1}", f"{urls[2 * r]}, {urls[2 * r + 1]}"] for r in range(4)]
    rows[-1][2] += f", {missing}"
    return csv_bytes(rows), urls, missing


async def _drop(page: Any, name: str, text: str) -> None:
    """Drop a file on the drop zone, as a user dragging it from their desktop."""
    await page.evaluate(
        """([name, text]) => {
             const transfer = new DataTransfer();
             transfer.items.add(new File([text], name, { type: "text/csv" }));
             const zone = document.getElementById("drop");
             for (const type of ["dragenter", "dragover", "drop"]) {
               zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true }));
             }
           }""",
        [name, text],
    )


async def test_upload_progress_result_and_download(
    create_service: ServiceFactory, origin: Origin, browser: Any, shots: Path, tmp_path: Path
) -> None:
    service = await create_service(limits={"max_upload_bytes": 20_000})
    data, urls, missing = _job(origin)
    good = tmp_path / "products.csv"
    good.write_bytes(data)
    big = tmp_path / "catalogue.csv"
    big.write_bytes(csv_bytes([[str(n), "x" * 200, urls[0]] for n in range(200)]))
    page = await browser.new_page(viewport=DESKTOP)
    console = Console(page)
    asked = Requests(page)

    # Over the size limit: said plainly, with the file's size.
    await page.goto(f"{service.url}/")
    await page.wait_for_selector("#recent-note >> text=No requests yet")
    await page.set_input_files("#file", str(big))
    await page.click("#submit")
    error = page.locator("#upload-error")
    await page.wait_for_selector("#upload-error h2 >> text=The file is too large")
    assert await error.locator("p").inner_text() == (
        f"catalogue.csv is {big.stat().st_size / 1000:.1f} kB: "
        "the file is larger than the limit of 20000 bytes."
    )

    # The real upload, through the file picker: on to the request's own page.
    await page.set_input_files("#file", str(good))
    await page.click("#submit")
    await page.wait_for_url(re.compile(r"/requests/[0-9a-f]{32}$"))
    request_id = page.url.rsplit("/", 1)[1]

    # Live progress: part done, with a throughput and a time left.
    await page.wait_for_function(
        """() => {
             const [done, total] = document.getElementById("stat-done").textContent.split(" / ");
             const rate = document.getElementById("stat-rate").textContent;
             return Number(done) > 0 && Number(done) < Number(total) && rate.endsWith("images/s");
           }""",
        timeout=20_000,
    )
    assert await page.inner_text("#badge") == "processing"
    assert re.fullmatch(r"~\d+ s|< 1 s", await page.inner_text("#stat-eta"))
    await _screenshot(page, shots / "screenshot-progress.png")

    # Done: the result, the download and the table of images.
    await page.wait_for_selector("#result:not([hidden])", timeout=20_000)
    assert await page.inner_text("#badge") == "complete · some failed"
    assert await page.inner_text("#stat-done") == f"{IMAGES + 1} / {IMAGES + 1}"
    assert await page.inner_text("#stat-failed") == "1"
    assert re.match(r"Saved \d", await page.inner_text("#saved"))
    rows = page.locator("#image-rows tr")
    await rows.nth(IMAGES).wait_for()
    assert await rows.count() == IMAGES + 1
    first = rows.nth(0)
    # Small previews made by the service, never the originals from their origin.
    thumbnails = f"{service.url}/thumbnails/{request_id}/"
    before = await first.locator(".c-before img").get_attribute("src")
    after = await first.locator(".c-after img").get_attribute("src")
    assert before.startswith(thumbnails) and before.endswith("-before.webp")
    assert after.startswith(thumbnails) and after.endswith("-after.webp")
    assert await first.locator(".c-before a").get_attribute("href") == urls[0]
    assert await first.locator(".c-before img").get_attribute("loading") == "lazy"
    assert await _thumbnail_sizes(page) == [(144, 108)] * (2 * IMAGES)
    assert await first.locator(".c-result").inner_text() == "✓ compressed"
    failed = rows.nth(IMAGES)
    assert missing in await failed.locator(".c-row").inner_text()
    assert await failed.locator(".c-result").inner_text() == "✗ HTTP 404 from origin"
    await _screenshot(page, shots / "screenshot-complete.png")

    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    assert download.suggested_filename == f"{request_id}.csv"
    out = list(csv.DictReader(io.StringIO(Path(await download.path()).read_text("utf-8"))))
    files = f"{service.url}/files/{request_id}"
    assert [r["Product Name"] for r in out] == ["Product 1", "Product 2", "Product 3", "Product 4"]
    assert out[0]["Output Image Urls"] == f"{files}/1-1.jpg, {files}/1-2.jpg"
    assert out[3]["Output Image Urls"] == f"{files}/4-1.jpg, {files}/4-2.jpg, "
    assert out[3]["Errors"] == "#3: HTTP 404 from origin"

    # The home page lists it by the file's name, with its state and counts.
    await page.goto(f"{service.url}/")
    item = page.locator("#recent li").first
    await item.wait_for()
    assert await item.locator(".name").inner_text() == "products.csv"
    assert await item.locator(".badge").inner_text() == "complete · some failed"
    assert (await item.locator(".meta").inner_text()).startswith(
        f"{IMAGES + 1} of {IMAGES + 1} images done · 1 failed · "
    )
    # A refused CSV, dropped on the page, shows every problem.
    broken = "S. No.,Product Name,Input Image Urls\n1,A,\n2,B,ftp://x/y.jpg\n"
    await _drop(page, "broken.csv", broken)
    assert await page.inner_text("#file-name") == f"broken.csv · {len(broken)} bytes"
    await page.click("#submit")
    await error.wait_for(state="visible")
    assert await error.locator("h2").inner_text() == "The CSV was refused: 2 problems"
    assert await error.locator("li").all_inner_texts() == [
        "Line 2 · Input Image Urls: the URL cell is empty",
        "Line 3 · Input Image Urls: not an http(s) URL: 'ftp://x/y.jpg'",
    ]
    await _screenshot(page, shots / "screenshot-desktop.png")

    # The browser never asked an image's origin for anything.
    assert [url for url in asked.urls if url.startswith(origin.url)] == []
    # Only the two refused uploads' answers were reported, as Chromium reports any 4xx.
    refused = "Failed to load resource: the server responded with a status of"
    assert console.errors == [
        f"{refused} 413 (Request Entity Too Large)",
        f"{refused} 400 (Bad Request)",
    ]

    await _phone(browser, service.url, request_id, shots)


async def _phone(browser: Any, base: str, request_id: str, shots: Path) -> None:
    """The same pages on a phone, with an API key typed in: sent on every API call."""
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = await context.new_page()
    console = Console(page)
    sent: dict[str, str | None] = {}
    page.on("request", lambda r: sent.__setitem__(r.url, r.headers.get("authorization")))

    await page.goto(f"{base}/")
    await page.click("#apikey summary")
    await page.fill("#apikey-input", "s3cret")
    await page.click("#apikey-form button[type=submit]")
    await page.wait_for_selector("#apikey-state >> text=set")
    await page.locator("#recent li").first.wait_for()
    await _screenshot(page, shots / "screenshot-phone-upload.png")

    await page.goto(f"{base}/requests/{request_id}")
    await page.locator("#image-rows tr").nth(IMAGES).wait_for()
    await _screenshot(page, shots / "screenshot-phone.png")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "the page scrolls sideways on a phone"

    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    assert Path(await download.path()).read_text("utf-8").startswith("S. No.,Product Name")

    assert sent[f"{base}/requests?limit=10"] == "Bearer s3cret"
    assert sent[f"{base}/status/{request_id}"] == "Bearer s3cret"
    assert sent[f"{base}/requests/{request_id}/images?limit=100"] == "Bearer s3cret"
    assert sent[f"{base}/requests/{request_id}/output.csv"] == "Bearer s3cret"
    assert console.errors == []
    await context.close()


async def test_an_unknown_request_page_says_so(
    create_service: ServiceFactory, browser: Any
) -> None:
    service = await create_service()
    page = await browser.new_page(viewport=DESKTOP)
    await page.goto(f"{service.url}/requests/0123456789abcdef0123456789abcdef")
    alert = page.locator("#load-error")
    await alert.wait_for(state="visible")
    assert await alert.locator("h2").inner_text() == "No such request"
    assert await page.is_hidden("#progress-block")


async def test_cancel_download_retry_and_delete_from_the_page(
    create_service: ServiceFactory, origin: Origin, browser: Any, receiver: Receiver
) -> None:
    service = await create_service(fetch={"concurrency": 1}, workers={"threads": 1})
    fast = origin.add("fast.jpg", images.photo_jpeg(240, 180))
    held = [
        origin.add(f"held/{n}.jpg", images.photo_jpeg(240, 180, seed=n), held=True)
        for n in range(3)
    ]
    rows = [["1", "Fast", fast], ["2", "Held", ", ".join(held)]]
    request_id = await service.submit(csv_bytes(rows), webhook_url=receiver.url)
    await service.wait_until(request_id, lambda d: d["images"]["succeeded"] == 1, "the fast image")
    page = await browser.new_page(viewport=DESKTOP)
    console = Console(page)
    dialogs: list[str] = []

    async def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    await page.goto(f"{service.url}/requests/{request_id}")
    await page.wait_for_selector("#cancel:not([hidden])")
    assert await page.is_hidden("#delete") and await page.is_hidden("#retry")

    # Cancel, confirmed: the images in flight end, and the output CSV is offered.
    try:
        await page.click("#cancel")
        # Cancelling while the images in flight end; cancelled once the CSV is written.
        await page.wait_for_selector("#badge >> text=cancelling")
    finally:
        origin.release()
    await page.wait_for_selector("#badge >> text=cancelled", timeout=20_000)
    assert dialogs[0].startswith("Cancel this request?")
    await page.wait_for_selector("#result:not([hidden])", timeout=20_000)
    assert "Cancelled: 3 images of 4 skipped" in await page.inner_text("#saved")
    async with page.expect_download() as info:
        await page.click("#download")
    out = list(
        csv.DictReader(io.StringIO(Path(await (await info.value).path()).read_text("utf-8")))
    )
    assert out[0]["Output Image Urls"] == f"{service.url}/files/{request_id}/1-1.jpg"
    assert out[1]["Errors"].startswith("#1: skipped: the request was cancelled")
    # The webhook line follows the delivery after the request ended.
    await page.wait_for_selector("#webhook >> text=was delivered", timeout=20_000)

    # Retry the skipped images: the request runs again and completes.
    assert await page.inner_text("#retry") == "Retry 3 images not done"
    await page.click("#retry")
    await page.wait_for_selector("#badge >> text=complete", timeout=20_000)
    await page.wait_for_selector("#stat-done >> text=4 / 4")
    assert await page.is_hidden("#retry")
    await page.locator("#image-rows tr").nth(3).wait_for()
    assert await page.locator("#image-rows .c-result").all_inner_texts() == ["✓ compressed"] * 4

    # Send the webhook again, then delete, confirmed: the request is gone.
    await page.click("#redeliver")
    await receiver.wait_for(3)  # cancelled, completed, and the completed one again
    await page.click("#delete")
    await page.wait_for_selector("#load-error >> text=Request deleted")
    assert dialogs[1].startswith("Delete this request")
    async with service.client.get(f"{service.url}/status/{request_id}") as resp:
        assert resp.status == 404
    assert console.errors == []


async def test_a_finished_100_image_page_is_light_and_never_asks_the_origins(
    create_service: ServiceFactory, origin: Origin, browser: Any
) -> None:
    service = await create_service()
    photos = [images.photo_jpeg(1600, 1200, seed=n) for n in range(10)]
    # 99 images, and one at an address the guard refuses: 100.
    urls = [origin.add(f"p/{n}.jpg", photos[n % len(photos)]) for n in range(99)]
    urls.append("http://10.0.0.5/a.jpg")
    rows = [[str(r + 1), f"P{r}", ", ".join(urls[10 * r : 10 * r + 10])] for r in range(10)]
    request_id = await service.submit(csv_bytes(rows))
    await service.wait(request_id)
    originals = sum(len(photos[n % len(photos)]) for n in range(99))

    page = await browser.new_page(viewport=DESKTOP)
    asked = Requests(page)
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    received: list[int] = []
    cdp.on("Network.loadingFinished", lambda event: received.append(event["encodedDataLength"]))
    await page.goto(f"{service.url}/requests/{request_id}")
    await page.locator("#image-rows tr").nth(99).wait_for()
    # Every thumbnail loaded (scrolled through, as a user reading the whole page).
    sizes = await _thumbnail_sizes(page)
    assert len(sizes) == 2 * 99 and all(max(size) == 144 for size in sizes)
    await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    await page.wait_for_function("() => [...document.images].every((img) => img.complete)")

    transferred = sum(received)
    assert transferred < 3_000_000, f"{transferred} bytes; the originals are {originals}"
    assert [url for url in asked.urls if url.startswith(origin.url)] == []
    # The guard's refusal is explained once, naming the setting.
    hint = page.locator("#guard-hint")
    assert await hint.is_visible()
    assert "[fetch] allowed_networks" in await hint.inner_text()
    assert await page.locator("text=Some images were refused for their address").count() == 1
