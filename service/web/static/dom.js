// Small DOM helpers of the page: element builders (textContent only, never markup), number
// formats and the message banner.

export const TERMINAL = new Set(["SUCCEEDED", "CANCELLED", "FAILED"]);
const SVG_NS = "http://www.w3.org/2000/svg";

// ------------------------------------------------------------------ small helpers
export const $ = (id) => document.getElementById(id);

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") el.textContent = value;
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) if (child) el.append(child);
  return el;
}

export const fmtInt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
export const fmtNum = (n, digits = 2) =>
  n === null || n === undefined || Number.isNaN(n) ? "—" : Number(n).toFixed(digits);
export const fmtPct = (x) => (x === null || x === undefined ? "—" : (100 * x).toFixed(2) + "%");
export const fmtRatio = (x) => (x === null || x === undefined ? "—" : Number(x).toFixed(2) + "×");
export const fmtDate = (s) => (s ? new Date(s).toLocaleString() : "—");

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit === 0 ? String(value) : value.toFixed(1)) + " " + units[unit];
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

// ------------------------------------------------------------------ messages
export function showBanner(text, kind) {
  const banner = $("banner");
  banner.textContent = text;
  banner.className = "banner" + (kind === "info" ? " info" : "");
  banner.hidden = !text;
}

export const clearBanner = () => showBanner("");
