// The page of one request: live progress from GET /status every second, then the result,
// the download, the table of images, and the buttons that act on it (cancel, retry, delete,
// send the webhook again). After the request ends, the page keeps checking (less often)
// until its webhook is delivered or given up.
import {
  api, apiKey, authHeaders, badge, formatBytes, formatDuration, formatRate, formatWhen, h,
  isFinished, plural, setupKeyControl,
} from "./common.js";

const POLL_MS = 1000;
const WEBHOOK_POLL_MS = 5000;
const MAX_RETRY_MS = 5000;
const RATE_WINDOW_MS = 15000;
const IMAGES_PAGE = 100;
// A webhook delivery in these states will not change any more.
const WEBHOOK_SETTLED = ["delivered", "failed"];

const requestId = decodeURIComponent(window.location.pathname.split("/").filter(Boolean)[1] || "");
const $ = (id) => document.getElementById(id);

let timer = null;
let retryMs = POLL_MS;
let samples = []; // [time in ms, images done] seen while the request runs
let shownEnd = null; // the finished state whose result and images are on the page
let deleted = false;

const keyControl = setupKeyControl(() => {
  $("load-error").hidden = true;
  restart();
});

function restart() {
  clearTimeout(timer);
  if (!deleted) poll();
}

function fail(title, text) {
  $("load-error").replaceChildren(h("h2", {}, title), h("p", {}, text));
  $("load-error").hidden = false;
  $("progress-block").hidden = true;
  $("controls").hidden = true;
  $("badge").replaceChildren(h("span", { class: "badge s-failed" }, "unavailable"));
}

async function poll() {
  let result;
  try {
    result = await api(`/status/${encodeURIComponent(requestId)}`);
  } catch {
    $("bar-label").textContent = "Lost contact with the server; trying again…";
    retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
    timer = setTimeout(poll, retryMs);
    return;
  }
  retryMs = POLL_MS;
  const { status, body } = result;
  if (deleted) return;
  if (status === 404) {
    fail("No such request", `There is no request with ID ${requestId}. The link may be incomplete, or the request was deleted.`);
    return;
  }
  if (status === 401 || status === 403) {
    fail("An API key is needed", `${(body && body.error) || "This server needs an API key"}. Enter it under “API key” at the top.`);
    keyControl.ask();
    return; // saving a key restarts polling
  }
  if (status !== 200 || !body) {
    $("bar-label").textContent = `The server answered HTTP ${status}; trying again…`;
    timer = setTimeout(poll, MAX_RETRY_MS);
    return;
  }
  $("progress-block").hidden = false;
  render(body);
  renderControls(body);
  if (!isFinished(body.status)) {
    timer = setTimeout(poll, POLL_MS);
    return;
  }
  // Once per end (a retried request ends again): the result and the images.
  const end = `${body.status} ${body.output_csv_url} ${body.images.failed} ${body.images.succeeded}`;
  if (end !== shownEnd) {
    shownEnd = end;
    finish(body);
  }
  // A cancelled request's output CSV comes once its images in flight have ended.
  if (!body.output_csv_url && body.status === "cancelled") {
    timer = setTimeout(poll, POLL_MS);
  } else if (body.webhook && !WEBHOOK_SETTLED.includes(body.webhook.state)) {
    // The request is over, its webhook may not be: follow it until it settles.
    timer = setTimeout(poll, WEBHOOK_POLL_MS);
  }
}

// --- progress ------------------------------------------------------------------------------

// Images per second over the last few seconds of updates; null until there is enough to say.
function liveRate(done) {
  const now = Date.now();
  samples.push([now, done]);
  while (samples.length > 2 && now - samples[1][0] >= RATE_WINDOW_MS) samples.shift();
  const [then, doneThen] = samples[0];
  const seconds = (now - then) / 1000;
  return seconds >= 1.5 ? (done - doneThen) / seconds : null;
}

function about(seconds) {
  return seconds < 1 ? "< 1 s" : `~${formatDuration(seconds)}`;
}


function render(doc) {
  const { total, succeeded, failed, pending } = doc.images;
  const done = succeeded + failed;
  const finished = isFinished(doc.status);
  const pct = total ? Math.floor((done / total) * 100) : 100;

  $("badge").replaceChildren(badge(doc));
  $("title").textContent = doc.file_name || "Request";
  $("request-id").textContent = `ID ${doc.request_id}`;
  $("when").textContent = `Uploaded ${formatWhen(doc.created_at)} · ${plural(doc.rows, "row")} · ${plural(total, "image")}`;
  document.title = `${finished ? doc.status : `${pct}%`} · ${doc.file_name || "Request"} · csvcompress`;

  const bar = $("bar");
  bar.max = Math.max(total, 1);
  bar.value = total ? done : 1;
  bar.classList.toggle("done", doc.status === "complete");
  bar.classList.toggle("failed", doc.status === "failed");
  $("bar-label").textContent = `${done.toLocaleString()} of ${plural(total, "image")} done (${pct}%)`;

  $("stat-done").textContent = `${done.toLocaleString()} / ${total.toLocaleString()}`;
  $("stat-failed").textContent = failed.toLocaleString();
  $("stat-failed").classList.toggle("bad", failed > 0);

  if (finished) {
    // Time spent processing, measured by the server: not the wait before it, nor the
    // time after a cancel or before a retry.
    const seconds = doc.processing_seconds;
    $("rate-label").textContent = "Throughput";
    $("stat-rate").textContent = seconds > 0 ? formatRate(done / seconds) : "–";
    $("eta-label").textContent = "Processing took";
    $("stat-eta").textContent = seconds > 0 ? formatDuration(seconds) : "–";
  } else {
    $("rate-label").textContent = "Throughput";
    $("eta-label").textContent = "Time left";
    const rate = liveRate(done);
    $("stat-rate").textContent = rate === null ? "measuring…" : formatRate(rate);
    $("stat-eta").textContent =
      rate === null ? "estimating…" : rate > 0 ? about(pending / rate) : "–";
  }
  renderWebhook(doc.webhook);
}

function renderWebhook(hook) {
  const el = $("webhook");
  if (!hook) {
    el.hidden = true;
    return;
  }
  const states = {
    waiting: "will be called when the request finishes",
    pending: `is being delivered (${plural(hook.attempts, "attempt")} so far)`,
    delivered: `was delivered (${plural(hook.attempts, "attempt")})`,
    failed: `could not be delivered after ${plural(hook.attempts, "attempt")}`,
  };
  const said = states[hook.state] || hook.state;
  const why = hook.last_error ? `: ${hook.last_error}` : "";
  el.textContent = `Webhook ${hook.url} ${said}${hook.state === "delivered" ? "" : why}.`;
  el.hidden = false;
}

// --- the result ----------------------------------------------------------------------------

function finish(doc) {
  const { total, failed } = doc.images;
  const skipped = doc.images.skipped || 0;
  $("result").hidden = true;
  $("request-error").hidden = true;
  // A cancelled request has an output CSV too: what was done before the cancel.
  if (doc.output_csv_url) {
    const saved = doc.bytes.saved;
    const pct = doc.bytes.input ? Math.round((saved / doc.bytes.input) * 100) : 0;
    const link = $("download");
    link.href = `/requests/${encodeURIComponent(doc.request_id)}/output.csv`;
    link.setAttribute("download", `${doc.request_id}.csv`);
    const summary = [
      "Saved ",
      h("strong", {}, formatBytes(saved)),
      ` (${pct}%): ${formatBytes(doc.bytes.input)} → ${formatBytes(doc.bytes.output)}.`,
    ];
    if (doc.status === "cancelled") {
      summary.push(
        h("br"),
        `Cancelled: ${plural(skipped, "image")} of ${total.toLocaleString()} skipped; the CSV has what was done before the cancel.`,
      );
    } else if (failed) {
      summary.push(
        h("br"),
        `${plural(failed, "image")} of ${total.toLocaleString()} failed; the reasons are below and in the CSV's Errors column.`,
      );
    }
    $("saved").replaceChildren(...summary);
    $("result").classList.toggle("partial", failed > 0 || doc.status !== "complete");
    $("result").hidden = false;
  }
  if (doc.status === "failed") {
    const reason = doc.error || "The request ended as “failed”.";
    $("request-error").replaceChildren(h("h2", {}, "The request did not complete"), h("p", {}, reason));
    $("request-error").hidden = false;
  }
  resetImages();
  if (total > 0) loadImages();
}

// --- acting on the request -------------------------------------------------------------

const CONFIRM = {
  cancel: "Cancel this request? Images not done yet are skipped; the output CSV keeps what was done.",
  delete: "Delete this request, its output CSV and its images? This cannot be undone.",
};

function renderControls(doc) {
  const finished = isFinished(doc.status);
  const { failed } = doc.images;
  const skipped = doc.images.skipped || 0;
  $("cancel").hidden = finished;
  $("retry").hidden = !finished || failed + skipped === 0;
  $("retry").textContent = skipped
    ? `Retry ${plural(failed + skipped, "image")} not done`
    : `Retry ${plural(failed, "failed image")}`;
  $("redeliver").hidden = !finished || !doc.webhook;
  $("delete").hidden = !finished;
  $("controls").hidden = false;
}

async function act(button, method, path, expected, confirmText) {
  if (confirmText && !window.confirm(confirmText)) return null;
  $("action-error").hidden = true;
  button.disabled = true;
  let result;
  try {
    result = await api(path, { method });
  } catch {
    result = { status: 0, body: null };
  } finally {
    button.disabled = false;
  }
  if (result.status === expected) return result;
  if (result.status === 401 || result.status === 403) keyControl.ask();
  const why = (result.body && result.body.error) || (result.status ? `HTTP ${result.status}` : "the server could not be reached");
  $("action-error").replaceChildren(h("h2", {}, `${button.textContent} did not work`), h("p", {}, why));
  $("action-error").hidden = false;
  return null;
}

const base = `/requests/${encodeURIComponent(requestId)}`;

$("cancel").addEventListener("click", async (event) => {
  if (await act(event.currentTarget, "DELETE", base, 200, CONFIRM.cancel)) restart();
});

$("retry").addEventListener("click", async (event) => {
  if (await act(event.currentTarget, "POST", `${base}/retry`, 202)) {
    samples = [];
    restart();
  }
});

$("redeliver").addEventListener("click", async (event) => {
  if (await act(event.currentTarget, "POST", `${base}/webhook/redeliver`, 202)) restart();
});

$("delete").addEventListener("click", async (event) => {
  if (!(await act(event.currentTarget, "DELETE", base, 204, CONFIRM.delete))) return;
  deleted = true;
  clearTimeout(timer);
  for (const id of ["progress-block", "result", "controls", "images-card", "webhook", "guard-hint"]) {
    $(id).hidden = true;
  }
  $("badge").replaceChildren(h("span", { class: "badge" }, "deleted"));
  $("load-error").replaceChildren(
    h("h2", {}, "Request deleted"),
    h("p", {}, "Its output CSV and images are gone. ", h("a", { href: "/" }, "Upload another CSV")),
  );
  $("load-error").hidden = false;
});

// With an API key a plain link cannot send it, so the file is fetched and handed over.
$("download").addEventListener("click", async (event) => {
  if (!apiKey()) return;
  event.preventDefault();
  const link = event.currentTarget;
  const resp = await fetch(link.href, { headers: authHeaders() });
  if (!resp.ok) {
    $("request-error").replaceChildren(h("h2", {}, "The download failed"), h("p", {}, `HTTP ${resp.status}`));
    $("request-error").hidden = false;
    return;
  }
  const url = URL.createObjectURL(await resp.blob());
  const save = h("a", { href: url, download: link.getAttribute("download") });
  document.body.append(save);
  save.click();
  save.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
});

// --- images table --------------------------------------------------------------------------

let imagesCursor = null;
let imagesShown = 0;

// A thumbnail the service made (never the original from its origin); "no preview" when
// it cannot be made. The link opens the full image, if the user asks for it.
function thumb(src, href, alt) {
  const img = h("img", {
    class: "thumb", src, alt, loading: "lazy", decoding: "async",
    width: 72, height: 72, referrerpolicy: "no-referrer",
  });
  img.addEventListener("error", () => img.replaceWith(h("span", { class: "no-thumb" }, "no preview")));
  return h("a", { href, target: "_blank", rel: "noopener noreferrer" }, img);
}

function sizeCell(image) {
  if (image.status !== "succeeded") return "–";
  const { input, output } = image.bytes;
  const change = input ? Math.round(((input - output) / input) * 100) : 0;
  return [
    `${formatBytes(input)} → ${formatBytes(output)}`,
    h("br"),
    h("span", { class: change > 0 ? "smaller" : "muted" }, change > 0 ? `−${change}%` : "no smaller"),
  ];
}

function resultCell(image) {
  if (image.status === "succeeded") return h("span", { class: "ok" }, "✓ compressed");
  if (image.status === "failed") {
    return h("span", { class: "reason", title: image.error_code || "" }, `✗ ${image.error || "failed"}`);
  }
  if (image.status === "skipped") return h("span", { class: "muted" }, "skipped (cancelled)");
  return h("span", { class: "muted" }, "not processed");
}

function imageRow(image) {
  const label = `row ${image.row}, image ${image.position}`;
  const ok = image.status === "succeeded";
  return h(
    "tr",
    {},
    h(
      "th",
      { scope: "row", class: "c-row" },
      `Row ${image.row} · #${image.position}`,
      h("a", { class: "src", href: image.url, target: "_blank", rel: "noopener noreferrer", title: image.url }, image.url),
    ),
    h("td", { class: "c-before" }, ok && image.thumbnails ? thumb(image.thumbnails.before, image.url, `Before: ${label}`) : h("span", { class: "no-thumb" }, "no image")),
    h("td", { class: "c-after" }, ok && image.thumbnails ? thumb(image.thumbnails.after, image.output_url, `After: ${label}`) : h("span", { class: "no-thumb" }, "–")),
    h("td", { class: "c-size num" }, sizeCell(image)),
    h("td", { class: "c-result" }, resultCell(image)),
  );
}

function resetImages() {
  imagesCursor = null;
  imagesShown = 0;
  guardHinted = false;
  $("image-rows").replaceChildren();
  $("guard-hint").hidden = true;
  $("images-card").hidden = true;
}

// Said once for the request, whichever images the guard refused: how to allow them.
let guardHinted = false;

function hintGuard(images) {
  if (guardHinted || !images.some((image) => image.error_code === "address_not_allowed")) return;
  guardHinted = true;
  $("guard-hint").replaceChildren(
    h("strong", {}, "Some images were refused for their address. "),
    "The service does not fetch from private or loopback addresses (such as 127.0.0.1 or 192.168.x.x). " +
      "To allow a network, list it in ",
    h("code", {}, "[fetch] allowed_networks"),
    " (for a local test: ",
    h("code", {}, "CSVCOMPRESS_FETCH_ALLOWED_NETWORKS=127.0.0.0/8"),
    "), restart the service, then retry the failed images.",
  );
  $("guard-hint").hidden = false;
}

async function loadImages() {
  const query = new URLSearchParams({ limit: String(IMAGES_PAGE) });
  if (imagesCursor) query.set("cursor", imagesCursor);
  const more = $("images-more");
  more.disabled = true;
  let result;
  try {
    result = await api(`/requests/${encodeURIComponent(requestId)}/images?${query}`);
  } catch {
    result = { status: 0, body: null };
  }
  more.disabled = false;
  if (result.status !== 200 || !result.body) {
    more.textContent = "Could not load the images; try again";
    more.hidden = false;
    $("images-card").hidden = false;
    return;
  }
  const page = result.body;
  $("image-rows").append(...page.images.map(imageRow));
  hintGuard(page.images);
  imagesShown += page.images.length;
  imagesCursor = page.next_cursor;
  more.hidden = !imagesCursor;
  more.textContent = "Show more images";
  $("images-title").textContent = imagesCursor ? `Images (first ${imagesShown.toLocaleString()})` : "Images";
  $("images-card").hidden = false;
}

$("images-more").addEventListener("click", loadImages);

if (requestId) poll();
else fail("No request ID", "This address does not name a request.");
