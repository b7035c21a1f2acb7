// Shared by both pages: the API key, calls to the JSON API, DOM building and number formats.

// Written by the server from its own list of states (csvcompress/http/pages.py).
import { UNFINISHED_STATUSES } from "./statuses.js";

const KEY_STORAGE = "csvcompress.apiKey";

export function apiKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";
  }
}

function storeKey(value) {
  try {
    if (value) localStorage.setItem(KEY_STORAGE, value);
    else localStorage.removeItem(KEY_STORAGE);
  } catch {
    // Private mode without storage: the key lasts for this page only.
  }
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// fetch() for the API: sends the key; resolves to {status, ok, body} with the JSON body
// (or null), and rejects only when the server could not be reached.
export async function api(path, options = {}) {
  const resp = await fetch(path, {
    ...options,
    headers: { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) },
    cache: "no-store",
  });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  return { status: resp.status, ok: resp.ok, body };
}

// The "API key" control in the top bar; onChange runs after the key is saved or forgotten.
export function setupKeyControl(onChange) {
  const box = document.getElementById("apikey");
  const form = document.getElementById("apikey-form");
  const input = document.getElementById("apikey-input");
  const state = document.getElementById("apikey-state");
  const show = () => {
    state.textContent = apiKey() ? "set" : "none";
    input.value = apiKey();
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey(input.value.trim());
    show();
    box.open = false;
    onChange();
  });
  document.getElementById("apikey-forget").addEventListener("click", () => {
    storeKey("");
    show();
    box.open = false;
    onChange();
  });
  show();
  return {
    ask() {
      box.open = true;
      input.focus();
    },
  };
}

// h("a", {href: "/x", class: "y"}, "text", child): an element; text is never parsed as HTML.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const UNITS = ["bytes", "kB", "MB", "GB", "TB"];

export function formatBytes(n) {
  if (!Number.isFinite(n)) return "–";
  const sign = n < 0 ? "−" : "";
  let value = Math.abs(n);
  let unit = 0;
  while (value >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${sign}${value.toFixed(digits)} ${UNITS[unit]}`;
}

export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 1) return "< 1 s";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function formatRate(perSecond) {
  if (!Number.isFinite(perSecond) || perSecond <= 0) return "–";
  const digits = perSecond >= 10 ? 0 : 1;
  return `${perSecond.toFixed(digits)} images/s`;
}

export function plural(n, one, many = `${one}s`) {
  return `${n.toLocaleString()} ${n === 1 ? one : many}`;
}

export function formatWhen(iso) {
  const then = new Date(iso);
  if (Number.isNaN(then.getTime())) return iso;
  const ago = (Date.now() - then.getTime()) / 1000;
  if (ago < 45) return "just now";
  if (ago < 3600) return `${Math.round(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.round(ago / 3600)} h ago`;
  return then.toLocaleString();
}

// "complete" with failures reads as "complete, some failed": the badge says so.
export function badge(doc) {
  const partial = doc.status === "complete" && doc.images && doc.images.failed > 0;
  const label = partial ? "complete · some failed" : doc.status;
  return h("span", { class: `badge s-${partial ? "partial" : doc.status}` }, label);
}

// A state the server does not list as unfinished is final (including any added later).
export function isFinished(status) {
  return !UNFINISHED_STATUSES.includes(status);
}
