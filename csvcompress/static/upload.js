// The upload page: choose or drop a CSV, upload it with progress, show why it was refused,
// and list the recent requests.
import {
  api, authHeaders, badge, formatBytes, formatWhen, h, plural, setupKeyControl,
} from "./common.js";

const RECENT_PAGE = 10;

const form = document.getElementById("upload-form");
const fileInput = document.getElementById("file");
const fileName = document.getElementById("file-name");
const drop = document.getElementById("drop");
const submit = document.getElementById("submit");
const bar = document.getElementById("upload-progress");
const errorBox = document.getElementById("upload-error");

const keyControl = setupKeyControl(() => loadRecent(true));

// --- choosing a file -----------------------------------------------------------------

function showChosen() {
  const file = fileInput.files[0];
  fileName.textContent = file ? `${file.name} · ${formatBytes(file.size)}` : "No file chosen";
  if (file) errorBox.hidden = true;
}

fileInput.addEventListener("change", showChosen);

// A file dropped anywhere but the zone would make the browser open it and leave the page.
for (const type of ["dragover", "drop"]) {
  window.addEventListener(type, (event) => event.preventDefault());
}
drop.addEventListener("dragenter", () => drop.classList.add("over"));
drop.addEventListener("dragover", (event) => {
  event.dataTransfer.dropEffect = "copy";
  drop.classList.add("over");
});
drop.addEventListener("dragleave", (event) => {
  if (!drop.contains(event.relatedTarget)) drop.classList.remove("over");
});
drop.addEventListener("drop", (event) => {
  drop.classList.remove("over");
  const files = event.dataTransfer.files;
  if (!files.length) return;
  const picked = new DataTransfer();
  picked.items.add(files[0]);
  fileInput.files = picked.files;
  showChosen();
});

// --- uploading -----------------------------------------------------------------------

function send(data) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/upload");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) bar.value = event.loaded / event.total;
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      resolve({ status: xhr.status, body });
    });
    xhr.addEventListener("error", () => reject(new Error("network")));
    xhr.send(data);
  });
}

function showError(title, ...content) {
  errorBox.replaceChildren(h("h2", {}, title), ...content);
  errorBox.hidden = false;
  errorBox.focus();
}

function problemList(problems) {
  return h(
    "ol",
    { class: "problems" },
    problems.map((p) =>
      h("li", {}, h("span", { class: "where" }, `Line ${p.line}`), p.column ? ` · ${p.column}: ` : ": ", p.message),
    ),
  );
}

function capitalize(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function explain(status, body, file) {
  const message = (body && body.error) || `the server answered HTTP ${status}`;
  if (status === 400 && body && Array.isArray(body.problems) && body.problems.length) {
    showError(
      capitalize(message),
      h("p", {}, "Nothing was stored. Fix the file and upload it again."),
      problemList(body.problems),
    );
  } else if (status === 413) {
    showError(
      "The file is too large",
      h("p", {}, `${file.name} is ${formatBytes(file.size)}: ${message}.`),
    );
  } else if (status === 401 || status === 403) {
    showError("An API key is needed", h("p", {}, `${message}. Enter the key under “API key” at the top.`));
    keyControl.ask();
  } else {
    showError(status >= 500 ? "The server had a problem" : "The upload was refused", h("p", {}, message));
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = fileInput.files[0];
  if (!file) {
    showError("No file chosen", h("p", {}, "Choose a CSV file (or drop one on the box) first."));
    return;
  }
  errorBox.hidden = true;
  submit.disabled = true;
  submit.textContent = "Uploading…";
  bar.value = 0;
  bar.hidden = false;
  try {
    const { status, body } = await send(new FormData(form));
    if (status === 202 && body && body.request_id) {
      submit.textContent = "Uploaded";
      window.location.assign(`/requests/${encodeURIComponent(body.request_id)}`);
      return;
    }
    explain(status, body, file);
  } catch {
    showError(
      "Could not reach the server",
      h("p", {}, "The connection failed before an answer came. Check that the service is running, then try again."),
    );
  }
  submit.disabled = false;
  submit.textContent = "Upload and compress";
  bar.hidden = true;
});

// --- recent requests -------------------------------------------------------------------

const recent = document.getElementById("recent");
const recentNote = document.getElementById("recent-note");
const recentMore = document.getElementById("recent-more");
let cursor = null;

function note(text) {
  recentNote.textContent = text;
  recentNote.hidden = false;
}

// A request by the name of the file uploaded (its ID for one stored before names were
// kept), its state, and its counts.
function recentItem(req) {
  const images = req.images;
  const done = images.succeeded + images.failed;
  const parts = [`${done.toLocaleString()} of ${plural(images.total, "image")} done`];
  if (images.failed) parts.push(`${images.failed.toLocaleString()} failed`);
  if (images.skipped) parts.push(`${images.skipped.toLocaleString()} skipped`);
  if (images.pending && req.status !== "failed") parts.push(`${images.pending.toLocaleString()} to go`);
  if (req.bytes.saved > 0) parts.push(`${formatBytes(req.bytes.saved)} saved`);
  parts.push(formatWhen(req.created_at));
  const label = req.file_name
    ? h("span", { class: "name" }, req.file_name)
    : h("span", { class: "id" }, req.request_id);
  return h(
    "li",
    {},
    h(
      "a",
      { href: `/requests/${encodeURIComponent(req.request_id)}`, title: `Request ${req.request_id}` },
      badge(req),
      label,
      h("span", { class: "meta" }, parts.join(" · ")),
    ),
  );
}

async function loadRecent(reset) {
  if (reset) {
    cursor = null;
    recent.replaceChildren();
  }
  const query = new URLSearchParams({ limit: String(RECENT_PAGE) });
  if (cursor) query.set("cursor", cursor);
  let result;
  try {
    result = await api(`/requests?${query}`);
  } catch {
    note("Could not reach the server.");
    return;
  }
  const { status, body } = result;
  if (status === 401 || status === 403) {
    note("Enter the API key (top right) to see the recent requests.");
    recentMore.hidden = true;
    return;
  }
  if (status !== 200 || !body) {
    note(`Could not load the requests: ${(body && body.error) || `HTTP ${status}`}.`);
    return;
  }
  recent.append(...body.requests.map(recentItem));
  cursor = body.next_cursor;
  recentMore.hidden = !cursor;
  recentNote.textContent = "No requests yet. Upload a CSV to start one.";
  recentNote.hidden = recent.children.length > 0;
}

recentMore.addEventListener("click", () => loadRecent(false));
loadRecent(true);
