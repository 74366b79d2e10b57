// Routing by location.hash: one view shown at a time; the page's requests and its events stream
// are aborted when the view changes. The views register themselves with setViews().

import { $, clearBanner } from "./dom.js";
import { getKey } from "./api.js";

const views = { jobs: null, job: null, submit: null };

export function setViews(handlers) {
  Object.assign(views, handlers);
}

let pageAbort = null; // aborts the current page's requests and its events stream
let refreshTimer = null;

export function stopPage() {
  if (pageAbort) pageAbort.abort();
  pageAbort = null;
  if (refreshTimer) clearTimeout(refreshTimer);
  refreshTimer = null;
}

export function showView(name) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== "view-" + name;
  $("nav").hidden = name === "signin";
}

export function route() {
  stopPage();
  clearBanner();
  pageAbort = new AbortController();
  const hash = location.hash || "#/jobs";
  if (!getKey()) {
    showView("signin");
    $("signin-key").focus();
    return;
  }
  $("key-label").textContent = "signed in"; // no part of the key is ever shown
  if (hash.startsWith("#/jobs/")) {
    views.job(decodeURIComponent(hash.slice("#/jobs/".length)), pageAbort.signal);
  } else if (hash === "#/submit") {
    views.submit();
  } else {
    views.jobs(pageAbort.signal);
  }
}

export const pageSignal = () => pageAbort.signal;

// Runs fn after ms unless the view changes first.
export function refreshLater(fn, ms) {
  refreshTimer = setTimeout(fn, ms);
}
