// The page of one request: live progress from GET /status every second, then the result,
// the download and the table of images.
import {
  api, apiKey, authHeaders, badge, formatBytes, formatDuration, formatRate, formatWhen, h,
  isFinished, plural, setupKeyControl,
} from "./common.js";

const POLL_MS = 1000;
const MAX_RETRY_MS = 5000;
const RATE_WINDOW_MS = 15000;
const IMAGES_PAGE = 100;

const requestId = decodeURIComponent(window.location.pathname.split("/").filter(Boolean)[1] || "");
const $ = (id) => document.getElementById(id);

let timer = null;
let retryMs = POLL_MS;
const samples = []; // [time in ms, images done] seen while the request runs

const keyControl = setupKeyControl(() => {
  $("load-error").hidden = true;
  restart();
});

function restart() {
  clearTimeout(timer);
  poll();
}

function fail(title, text) {
  $("load-error").replaceChildren(h("h2", {}, title), h("p", {}, text));
  $("load-error").hidden = false;
  $("progress-block").hidden = true;
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
  if (isFinished(body.status)) {
    finish(body);
  } else {
    timer = setTimeout(poll, POLL_MS);
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

function elapsedSeconds(doc) {
  return (new Date(doc.updated_at) - new Date(doc.created_at)) / 1000;
}

function render(doc) {
  const { total, succeeded, failed, pending } = doc.images;
  const done = succeeded + failed;
  const finished = isFinished(doc.status);
  const pct = total ? Math.floor((done / total) * 100) : 100;

  $("badge").replaceChildren(badge(doc));
  $("request-id").textContent = `ID ${doc.request_id}`;
  $("when").textContent = `Uploaded ${formatWhen(doc.created_at)} · ${plural(doc.rows, "row")} · ${plural(total, "image")}`;
  document.title = `${finished ? doc.status : `${pct}%`} · Request · csvcompress`;

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
    const seconds = elapsedSeconds(doc);
    $("rate-label").textContent = "Throughput";
    $("stat-rate").textContent = formatRate(done / Math.max(seconds, 0.001));
    $("eta-label").textContent = "Took";
    $("stat-eta").textContent = formatDuration(seconds);
  } else {
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
  if (doc.status === "complete" && doc.output_csv_url) {
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
    if (failed) {
      summary.push(
        h("br"),
        `${plural(failed, "image")} of ${total.toLocaleString()} failed; the reasons are below and in the CSV's Errors column.`,
      );
    }
    $("saved").replaceChildren(...summary);
    $("result").classList.toggle("partial", failed > 0);
    $("result").hidden = false;
  }
  if (doc.status !== "complete") {
    const reason = doc.error || `The request ended as “${doc.status}”.`;
    $("request-error").replaceChildren(h("h2", {}, "The request did not complete"), h("p", {}, reason));
    $("request-error").hidden = false;
  }
  if (total > 0) loadImages();
}

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

function thumb(src, alt) {
  return h(
    "a",
    { href: src, target: "_blank", rel: "noopener noreferrer" },
    h("img", {
      class: "thumb", src, alt, loading: "lazy", decoding: "async",
      width: 72, height: 72, referrerpolicy: "no-referrer",
    }),
  );
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
    h("td", { class: "c-before" }, ok ? thumb(image.url, `Before: ${label}`) : h("span", { class: "no-thumb" }, "no image")),
    h("td", { class: "c-after" }, ok ? thumb(image.output_url, `After: ${label}`) : h("span", { class: "no-thumb" }, "–")),
    h("td", { class: "c-size num" }, sizeCell(image)),
    h("td", { class: "c-result" }, resultCell(image)),
  );
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
