// Building DOM without innerHTML: every string lands as text, so nothing from the API can
// become markup. h("a.link", {href, onclick}, "text", child, [children]).

export function h(spec, attrs, ...children) {
  const [head, ...classes] = spec.split(".");
  const [tag, id] = head.split("#");
  const el = document.createElement(tag || "div");
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className += (el.className ? " " : "") + value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "text") el.textContent = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) el.append(child);
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// --- formatting ---------------------------------------------------------------------------

export function num(value) {
  return Number(value || 0).toLocaleString("en-US");
}

export function ms(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(value < 10000 ? 2 : 1)} s`;
  const minutes = Math.floor(value / 60000);
  return `${minutes} min ${Math.round((value % 60000) / 1000)} s`;
}

export function ago(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  if (seconds < 86400 * 30) return `${Math.round(seconds / 86400)} d ago`;
  return new Date(iso).toLocaleDateString();
}

export function stamp(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "medium"});
}

export function clock(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function idOf(name) {
  return name.split("/").pop();
}

export function pretty(json) {
  if (typeof json !== "string") return JSON.stringify(json, null, 2);
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return json;
  }
}

// A run's state as the API spells it → the badge's words and colour.
const STATES = {
  QUEUED: ["Queued", "queued"],
  RUNNING: ["Running", "running"],
  COMPLETED: ["Completed", "ok"],
  FAILED: ["Failed", "bad"],
  CANCELLED: ["Cancelled", "muted"],
  REQUIRES_ACTION: ["Needs approval", "warn"],
  SUCCEEDED: ["Succeeded", "ok"],
};

export function badge(state) {
  const [label, tone] = STATES[state] || [state ? state.toLowerCase() : "No runs", "muted"];
  return h(`span.badge.${tone}`, {dataset: {state: state || "NONE"}}, label);
}

export function isActive(state) {
  return state === "QUEUED" || state === "RUNNING" || state === "REQUIRES_ACTION";
}

export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Without clipboard permission (plain http, headless): select a scratch textarea.
    const area = h("textarea.scratch", {value: text, readonly: true});
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (button) {
    const before = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = before; }, 1200);
  }
}

export function download(filename, text) {
  const url = URL.createObjectURL(new Blob([text], {type: "application/json"}));
  const link = h("a", {href: url, download: filename});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function notFound(detail) {
  return h("section.empty-state.not-found", {"data-testid": "not-found"},
    h("div.empty-icon", {"aria-hidden": "true"}, "∅"),
    h("h1", "Not found"),
    h("p.muted", detail || "It does not exist, or it is not in this workspace."),
    h("a.button", {href: "/sessions"}, "Back to sessions"));
}

// A request id: crypto.randomUUID where the page is a secure context, else the same from
// getRandomValues (plain HTTP on a LAN address has no randomUUID).
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, "0")).join("");
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}
