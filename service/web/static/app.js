// rankopt web page: a small single-page app over the /v1 API. Plain JavaScript, no build step.
//
// The API key is kept in sessionStorage (this tab only) and sent as "Authorization: Bearer" on
// every request; it never goes into a URL. Live progress reads /events with fetch() streaming,
// since EventSource cannot send the header. Everything shown is built with textContent, never
// innerHTML, so nothing a job's spec holds can run as markup.
"use strict";

(() => {
  const KEY_STORAGE = "rankopt.apiKey";
  const TERMINAL = new Set(["SUCCEEDED", "CANCELLED", "FAILED"]);
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ------------------------------------------------------------------ small helpers
  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
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

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") el.textContent = value;
      else el.setAttribute(name, String(value));
    }
    for (const child of children.flat()) if (child) el.append(child);
    return el;
  }

  const fmtInt = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
  const fmtNum = (n, digits = 2) =>
    n === null || n === undefined || Number.isNaN(n) ? "—" : Number(n).toFixed(digits);
  const fmtPct = (x) => (x === null || x === undefined ? "—" : (100 * x).toFixed(2) + "%");
  const fmtRatio = (x) => (x === null || x === undefined ? "—" : Number(x).toFixed(2) + "×");
  const fmtDate = (s) => (s ? new Date(s).toLocaleString() : "—");

  function fmtBytes(n) {
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

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "—";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  // ------------------------------------------------------------------ messages
  function showBanner(text, kind) {
    const banner = $("banner");
    banner.textContent = text;
    banner.className = "banner" + (kind === "info" ? " info" : "");
    banner.hidden = !text;
  }

  const clearBanner = () => showBanner("");

  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
    get readable() {
      return this.message + (this.code ? " (" + this.code + ")" : "");
    }
  }

  // ------------------------------------------------------------------ the key and the API
  const getKey = () => sessionStorage.getItem(KEY_STORAGE);

  function signOut(reason) {
    sessionStorage.removeItem(KEY_STORAGE);
    stopPage();
    $("jobs-table").querySelector("tbody").replaceChildren();
    $("key-label").textContent = "";
    resetJobView(); // nothing of this key stays in the page
    if (location.hash !== "#/signin") location.hash = "#/signin";
    else route();
    if (reason) showBanner(reason);
  }

  async function api(path, options = {}) {
    const { key = getKey(), ...init } = options;
    const headers = new Headers(init.headers || {});
    if (key) headers.set("Authorization", "Bearer " + key);
    let response;
    try {
      response = await fetch(path, { cache: "no-store", ...init, headers });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiFailure(0, "network_error", "the server could not be reached (" + err.message + ")");
    }
    if (!response.ok) {
      let code = "http_" + response.status;
      let message = response.statusText || "the request failed";
      try {
        const body = await response.json();
        if (body && typeof body.message === "string") {
          code = body.code || code;
          message = body.message;
        }
      } catch (_) {
        // not JSON: keep the status line
      }
      throw new ApiFailure(response.status, code, message);
    }
    return response;
  }

  const apiJson = async (path, options) => (await api(path, options)).json();

  // A 401 after sign-in means the key was revoked: forget it. Other errors go to the banner.
  function report(err) {
    if (err && err.name === "AbortError") return;
    if (err instanceof ApiFailure && err.status === 401) {
      signOut("Signed out: " + err.readable);
      return;
    }
    showBanner(err instanceof ApiFailure ? err.readable : String(err));
  }

  // ------------------------------------------------------------------ routing
  let pageAbort = null; // aborts the current page's requests and its events stream
  let refreshTimer = null;

  function stopPage() {
    if (pageAbort) pageAbort.abort();
    pageAbort = null;
    if (refreshTimer) clearTimeout(refreshTimer);
    refreshTimer = null;
  }

  function showView(name) {
    for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== "view-" + name;
    $("nav").hidden = name === "signin";
  }

  function route() {
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
      showJob(decodeURIComponent(hash.slice("#/jobs/".length)), pageAbort.signal);
    } else if (hash === "#/submit") {
      showSubmit();
    } else {
      showJobs(pageAbort.signal);
    }
  }

  // ------------------------------------------------------------------ sign-in
  async function signIn(event) {
    event.preventDefault();
    const input = $("signin-key");
    const key = input.value.trim();
    const error = $("signin-error");
    error.hidden = true;
    if (!key) {
      error.textContent = "Enter an API key.";
      error.hidden = false;
      return;
    }
    try {
      await api("/v1/jobs?limit=1", { key }); // the key is checked before it is kept
    } catch (err) {
      error.textContent =
        err instanceof ApiFailure && err.status === 401
          ? "This API key was refused: " + err.message
          : "Could not sign in: " + (err instanceof ApiFailure ? err.readable : err);
      error.hidden = false;
      return;
    }
    input.value = "";
    sessionStorage.setItem(KEY_STORAGE, key);
    // Back to the page that asked for a key, or to the jobs list.
    if (!location.hash || location.hash === "#/signin") location.hash = "#/jobs";
    else route();
  }

  // ------------------------------------------------------------------ jobs list
  let jobsCursor = null;

  function jobRow(job) {
    const p = job.progress;
    const done = job.status === "SUCCEEDED" ? p.trials_total : p.trials_done;
    return h(
      "tr",
      { "data-job": job.id },
      h("td", {}, h("a", { href: "#/jobs/" + encodeURIComponent(job.id) }, h("code", { text: job.id }))),
      h("td", { text: job.spec.arch || "—" }),
      h("td", { text: job.spec.dataset || "—" }),
      h("td", {}, h("span", { class: "badge " + job.status, text: job.status })),
      h(
        "td",
        {},
        h("progress", { max: Math.max(p.trials_total, 1), value: Math.min(done, p.trials_total) }),
        " " + p.trials_done + "/" + p.trials_total,
      ),
      h(
        "td",
        {},
        p.best_compression === null
          ? "—"
          : fmtRatio(p.best_compression) + " at " + fmtPct(p.best_accuracy),
      ),
      h("td", { text: fmtDate(job.created_at) }),
    );
  }

  async function loadJobs(signal, append) {
    const status = $("jobs-filter").value;
    const params = new URLSearchParams({ limit: "50" });
    if (status) params.set("status", status);
    if (append && jobsCursor) params.set("cursor", jobsCursor);
    const page = await apiJson("/v1/jobs?" + params, { signal });
    const body = $("jobs-table").querySelector("tbody");
    if (!append) body.replaceChildren();
    body.append(...page.jobs.map(jobRow));
    jobsCursor = page.next_cursor;
    $("jobs-more").hidden = !jobsCursor;
    $("jobs-empty").hidden = body.children.length > 0;
    if (page.jobs.some((job) => !TERMINAL.has(job.status)) && !append) {
      refreshTimer = setTimeout(() => loadJobs(signal, false).catch(report), 3000);
    }
  }

  function showJobs(signal) {
    showView("jobs");
    const match = /[?&]status=([A-Z]+)/.exec(location.hash);
    $("jobs-filter").value = match ? match[1] : "";
    jobsCursor = null;
    loadJobs(signal, false).catch(report);
  }

  // ------------------------------------------------------------------ one job
  const jobPage = { id: null, job: null, trials: [], result: null, sort: { key: "number", dir: 1 }, open: new Set() };

  function fact(list, name, value) {
    list.append(h("dt", { text: name }), h("dd", {}, value));
  }

  function renderJobHeader(job) {
    jobPage.job = job;
    $("job-id").textContent = job.id;
    const badge = $("job-status");
    badge.textContent = job.status;
    badge.className = "badge " + job.status;
    $("job-study").textContent = job.study_name;
    const spec = job.spec;
    const facts = $("job-facts");
    facts.replaceChildren();
    fact(facts, "Model", spec.arch);
    fact(facts, "Data", spec.dataset || "mnist5k");
    fact(facts, "Tolerance", (spec.max_accuracy_drop ?? 1) + " accuracy points");
    fact(facts, "Objective", (spec.objective || "params") + (spec.pareto ? " (Pareto search)" : ""));
    fact(facts, "Sampler", spec.sampler || "tpe");
    fact(facts, "Phase", job.phase);
    const p = job.progress;
    fact(facts, "Baseline accuracy", fmtPct(p.baseline_accuracy));
    fact(
      facts,
      "Best so far",
      p.best_compression === null ? "—" : fmtRatio(p.best_compression) + " at " + fmtPct(p.best_accuracy),
    );
    if (!TERMINAL.has(job.status)) fact(facts, "ETA", fmtSeconds(p.eta_s));
    fact(facts, "Created", fmtDate(job.created_at));
    if (job.finished_at) fact(facts, "Finished", fmtDate(job.finished_at));
    const progress = $("job-progress");
    const done = job.status === "SUCCEEDED" ? p.trials_total : Math.min(p.trials_done, p.trials_total);
    progress.max = Math.max(p.trials_total, 1);
    progress.value = done;
    $("job-progress-text").textContent =
      p.trials_done + " of " + p.trials_total + " trials done" +
      (p.trials_running ? ", " + p.trials_running + " running" : "");
    const error = $("job-error");
    error.hidden = !job.error;
    error.textContent = job.error ? "Failed: " + (job.error.message || job.error.code) : "";
    const finished = TERMINAL.has(job.status);
    $("job-cancel").hidden = finished || job.status === "CANCELLING";
    $("job-delete").hidden = !finished;
  }

  // Trials ------------------------------------------------------------
  function planEntries(plan) {
    if (!plan || typeof plan !== "object") return [];
    const source =
      plan.layers && typeof plan.layers === "object" && !("method" in plan.layers) ? plan.layers : plan;
    return Object.entries(source).filter(([, c]) => c && typeof c === "object" && "method" in c);
  }

  function planTable(plan) {
    if (!plan) return h("span", { class: "muted", text: "no plan: the trial has not run" });
    const entries = planEntries(plan);
    if (!entries.length) return h("span", { class: "muted", text: "no layer decomposed" });
    return h(
      "table",
      { class: "plan" },
      h("tr", {}, h("th", { text: "layer" }), h("th", { text: "method" }), h("th", { text: "ranks" })),
      entries.map(([name, c]) =>
        h("tr", {}, h("td", {}, h("code", { text: name })), h("td", { text: c.method }),
          h("td", { text: (c.ranks || []).join(" × ") || "—" })),
      ),
    );
  }

  function sortedTrials() {
    const { key, dir } = jobPage.sort;
    const value = (t) => (key === "seed" ? t.seed || "" : t[key]);
    return [...jobPage.trials].sort((a, b) => {
      const x = value(a);
      const y = value(b);
      if (x === y) return a.number - b.number;
      if (x === null || x === undefined) return 1; // blanks last either way
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * dir;
    });
  }

  function renderTrials() {
    const body = $("trials-table").querySelector("tbody");
    body.replaceChildren();
    const chosen = jobPage.result ? jobPage.result.chosen_trial : null;
    for (const t of sortedTrials()) {
      const open = jobPage.open.has(t.number);
      const toggle = h("button", {
        type: "button",
        class: "small",
        "aria-expanded": open ? "true" : "false",
        text: open ? "hide" : "show",
        onclick: () => {
          if (jobPage.open.has(t.number)) jobPage.open.delete(t.number);
          else jobPage.open.add(t.number);
          renderTrials();
        },
      });
      body.append(
        h(
          "tr",
          { "data-trial": t.number, class: t.number === chosen ? "chosen" : null },
          h("td", { class: "num", text: t.number }),
          h("td", { text: t.state }),
          h("td", { text: t.seed || "" }),
          h("td", { class: "num", text: fmtPct(t.accuracy) }),
          h("td", { class: "num", text: fmtNum(t.accuracy_drop) }),
          h("td", { class: "num", text: fmtRatio(t.compression) }),
          h("td", { class: "num", text: fmtInt(t.params_count) }),
          h("td", { class: "num", text: fmtInt(t.macs) }),
          h("td", { class: "num", text: fmtNum(t.duration_s, 1) }),
          h("td", {}, toggle),
        ),
      );
      if (open) {
        body.append(h("tr", { class: "detail", "data-plan-of": t.number }, h("td", { colspan: 10 }, planTable(t.plan))));
      }
    }
    $("trials-count").textContent = "(" + jobPage.trials.length + ")";
    for (const th of $("trials-table").querySelectorAll("th[data-key]")) {
      const sorted = th.dataset.key === jobPage.sort.key;
      if (sorted) th.setAttribute("aria-sort", jobPage.sort.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  function sortBy(key) {
    const sort = jobPage.sort;
    if (sort.key === key) sort.dir = -sort.dir;
    else {
      sort.key = key;
      sort.dir = key === "number" || key === "state" || key === "seed" ? 1 : -1;
    }
    renderTrials();
  }

  // The Pareto front: the result's once finished, else computed from the trials so far.
  function paretoNumbers() {
    if (jobPage.result) return new Set(jobPage.result.pareto_front.map((p) => p.trial));
    const points = plotPoints();
    const front = points.filter(
      (r) =>
        !points.some(
          (o) =>
            o.accuracy >= r.accuracy && o.compression >= r.compression &&
            (o.accuracy > r.accuracy || o.compression > r.compression),
        ),
    );
    return new Set(front.map((r) => r.number));
  }

  const plotPoints = () =>
    jobPage.trials.filter(
      (t) => t.state === "COMPLETE" && typeof t.accuracy === "number" && typeof t.compression === "number",
    );

  function ticks(lo, hi, count) {
    const span = hi - lo || 1;
    const step0 = span / count;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toFixed(10)));
    return out;
  }

  function renderPlot() {
    const box = $("plot");
    box.replaceChildren();
    const points = plotPoints();
    if (!points.length) {
      box.append(h("p", { class: "muted", text: "No completed trial yet." }));
      return;
    }
    const W = 720, H = 380, L = 60, R = 20, T = 16, B = 44;
    const baseline = jobPage.job ? jobPage.job.progress.baseline_accuracy : null;
    const tolerance = jobPage.job ? jobPage.job.spec.max_accuracy_drop ?? 1 : null;
    const xs = points.map((p) => p.compression);
    const ys = points.map((p) => 100 * p.accuracy);
    if (baseline !== null) ys.push(100 * baseline, 100 * baseline - tolerance);
    let [x0, x1] = [Math.min(1, ...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const padX = (x1 - x0 || 1) * 0.06;
    const padY = (y1 - y0 || 1) * 0.08;
    x0 -= padX; x1 += padX; y0 -= padY; y1 += padY;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    const plot = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", id: "pareto-plot",
      "aria-label": "accuracy against compression of every completed trial" });
    const axis = svg("g", { class: "axis" });
    for (const v of ticks(x0, x1, 8)) {
      axis.append(svg("line", { class: "grid-line", x1: sx(v), x2: sx(v), y1: T, y2: H - B }));
      axis.append(svg("text", { x: sx(v), y: H - B + 16, "text-anchor": "middle", text: v + "×" }));
    }
    for (const v of ticks(y0, y1, 6)) {
      axis.append(svg("line", { class: "grid-line", x1: L, x2: W - R, y1: sy(v), y2: sy(v) }));
      axis.append(svg("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end", text: v + "%" }));
    }
    axis.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }));
    axis.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B }));
    axis.append(svg("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle",
      text: "compression (original / compressed " + ((jobPage.job && jobPage.job.spec.objective) || "params") + ")" }));
    axis.append(svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle",
      transform: "rotate(-90 14 " + (T + H - B) / 2 + ")", text: "validation accuracy" }));
    plot.append(axis);
    if (baseline !== null) {
      plot.append(svg("line", { class: "line-baseline", x1: L, x2: W - R, y1: sy(100 * baseline), y2: sy(100 * baseline) }));
      const tol = 100 * baseline - tolerance;
      plot.append(svg("line", { class: "line-tolerance", x1: L, x2: W - R, y1: sy(tol), y2: sy(tol) }));
    }
    const front = paretoNumbers();
    const frontPts = points.filter((p) => front.has(p.number)).sort((a, b) => a.compression - b.compression);
    if (frontPts.length > 1) {
      plot.append(svg("polyline", { class: "front-line",
        points: frontPts.map((p) => sx(p.compression) + "," + sy(100 * p.accuracy)).join(" ") }));
    }
    for (const p of points) {
      const onFront = front.has(p.number);
      plot.append(
        svg("circle", { class: onFront ? "pt pt-front" : "pt pt-complete", "data-trial": p.number,
          cx: sx(p.compression), cy: sy(100 * p.accuracy), r: onFront ? 5.5 : 4.5 },
          svg("title", { text: "trial " + p.number + ": " + fmtPct(p.accuracy) + " at " + fmtRatio(p.compression) })),
      );
    }
    const chosen = jobPage.result ? jobPage.result.chosen_trial : null;
    const chosenPt = points.find((p) => p.number === chosen);
    if (chosenPt) {
      plot.append(svg("circle", { class: "pt-chosen", id: "chosen-point", "data-trial": chosen,
        cx: sx(chosenPt.compression), cy: sy(100 * chosenPt.accuracy), r: 10 },
        svg("title", { text: "chosen: trial " + chosen })));
    }
    box.append(plot);
  }

  // Result -------------------------------------------------------------
  function renderResult(result) {
    jobPage.result = result;
    $("job-result").hidden = !result;
    if (!result) return;
    const facts = $("result-facts");
    facts.replaceChildren();
    const b = result.baseline || {};
    const f = result.final || {};
    const r = result.ratios || {};
    fact(facts, "Accuracy", fmtPct(b.accuracy) + " → " + fmtPct(f.accuracy) + " (drop " + fmtNum(f.accuracy_drop) + " pt)");
    fact(facts, "Parameters", fmtInt(b.params) + " → " + fmtInt(f.params) + " (" + fmtRatio(r.params) + ")");
    fact(facts, "MACs", fmtInt(b.macs) + " → " + fmtInt(f.macs) + " (" + fmtRatio(r.macs) + ")");
    fact(facts, "Chosen trial", result.chosen_trial === null ? "none (the original model is kept)" : "#" + result.chosen_trial);
    fact(facts, "Tolerance met", f.constraint_met === false ? "no" : "yes");
    const body = $("layers-table").querySelector("tbody");
    body.replaceChildren(
      ...result.layers.map((layer) =>
        h(
          "tr",
          { "data-layer": layer.layer },
          h("td", {}, h("code", { text: layer.layer })),
          h("td", { text: layer.method, title: layer.reason || null }),
          h("td", { text: (layer.ranks || []).join(" × ") || "—" }),
          h("td", { class: "num", text: fmtInt(layer.params_before) }),
          h("td", { class: "num", text: fmtInt(layer.params_after) }),
          h("td", { class: "num", text: fmtInt(layer.macs_before) }),
          h("td", { class: "num", text: fmtInt(layer.macs_after) }),
        ),
      ),
    );
  }

  // Downloads ----------------------------------------------------------
  async function sha256Hex(buffer) {
    if (!(window.crypto && crypto.subtle)) return null; // only in a secure context
    const digest = await crypto.subtle.digest("SHA-256", buffer);
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function download(artifact, button, note) {
    button.disabled = true;
    note.textContent = "downloading…";
    note.className = "muted";
    try {
      const response = await api(artifact.url);
      const blob = await response.blob();
      const digest = await sha256Hex(await blob.arrayBuffer());
      if (digest === null) {
        note.textContent = "digest not checked (needs HTTPS)";
      } else if (digest !== artifact.sha256) {
        note.textContent = "digest mismatch: the file is damaged";
        note.className = "mismatch";
        return;
      } else {
        note.textContent = "✓ SHA-256 verified";
        note.className = "verified";
      }
      const url = URL.createObjectURL(blob);
      const link = h("a", { href: url, download: artifact.name, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      note.textContent = "";
      report(err);
    } finally {
      button.disabled = false;
    }
  }

  function renderArtifacts(artifacts) {
    const body = $("artifacts-table").querySelector("tbody");
    body.replaceChildren();
    for (const a of artifacts) {
      const note = h("span", {});
      const button = h("button", { type: "button", "data-download": a.name, text: "Download" });
      button.addEventListener("click", () => download(a, button, note));
      body.append(
        h(
          "tr",
          { "data-artifact": a.name },
          h("td", {}, h("code", { text: a.name })),
          h("td", { class: "num", title: a.size + " bytes", text: fmtBytes(a.size) }),
          h("td", { class: "digest" }, h("code", { text: a.sha256 })),
          h("td", {}, button, note),
        ),
      );
    }
    $("artifacts-empty").hidden = artifacts.length > 0;
  }

  // Loading and live updates ------------------------------------------
  async function loadDetails(id, signal) {
    const [trials, artifacts] = await Promise.all([
      apiJson("/v1/jobs/" + encodeURIComponent(id) + "/trials", { signal }),
      apiJson("/v1/jobs/" + encodeURIComponent(id) + "/artifacts", { signal }),
    ]);
    let result = null;
    if (jobPage.job && jobPage.job.status === "SUCCEEDED") {
      result = await apiJson("/v1/jobs/" + encodeURIComponent(id) + "/result", { signal });
    }
    if (id !== jobPage.id) return;
    jobPage.trials = trials.trials;
    renderResult(result);
    renderTrials();
    renderPlot();
    renderArtifacts(artifacts.artifacts);
  }

  async function loadDashboard(id, signal) {
    const info = await apiJson("/v1/jobs/" + encodeURIComponent(id) + "/dashboard", { signal });
    const link = $("job-dashboard");
    link.hidden = !info.url;
    if (info.url) link.href = info.url;
  }

  // Parses the text/event-stream body; calls onEvent(name, data) for each event.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // heartbeat comment
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = text;
          else if (field === "data") data.push(text);
        }
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
      }
    }
  }

  async function follow(id, signal) {
    let lastDone = jobPage.job ? jobPage.job.progress.trials_done : -1;
    while (!signal.aborted) {
      const live = $("job-live");
      let ended = false;
      try {
        live.textContent = "● live";
        const response = await api("/v1/jobs/" + encodeURIComponent(id) + "/events", {
          signal,
          headers: { Accept: "text/event-stream" },
        });
        await readEvents(response, (name, data) => {
          if (name === "error") {
            ended = true;
            showBanner(data.message + " (" + data.code + ")");
            return;
          }
          renderJobHeader(data);
          const done = data.progress.trials_done;
          if (name === "end") {
            ended = true;
            loadDetails(id, signal).catch(report);
          } else if (done !== lastDone) {
            lastDone = done;
            loadDetails(id, signal).catch(report);
          }
        });
      } catch (err) {
        if (signal.aborted) return;
        if (err instanceof ApiFailure && err.status !== 0 && err.status < 500) {
          report(err);
          return;
        }
        live.textContent = "reconnecting…";
      }
      if (ended || (jobPage.job && TERMINAL.has(jobPage.job.status))) {
        live.textContent = "finished";
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }

  // Empties the job page, so that nothing of the last job shown stays on it.
  function resetJobView() {
    for (const id of ["trials-table", "layers-table", "artifacts-table"]) {
      $(id).querySelector("tbody").replaceChildren();
    }
    for (const id of ["plot", "job-facts", "result-facts"]) $(id).replaceChildren();
    for (const id of ["job-id", "job-status", "job-study", "job-live", "job-progress-text", "job-error", "trials-count"]) {
      $(id).textContent = "";
    }
    $("job-status").className = "badge";
    $("job-progress").value = 0;
    $("job-dashboard").removeAttribute("href");
    for (const id of ["job-body", "job-result", "job-dashboard", "job-cancel", "job-delete", "job-error"]) {
      $(id).hidden = true;
    }
    for (const th of $("trials-table").querySelectorAll("th[aria-sort]")) th.removeAttribute("aria-sort");
  }

  async function showJob(id, signal) {
    showView("job");
    jobPage.id = id;
    jobPage.job = null;
    jobPage.trials = [];
    jobPage.result = null;
    jobPage.open = new Set();
    jobPage.sort = { key: "number", dir: 1 };
    resetJobView();
    try {
      const job = await apiJson("/v1/jobs/" + encodeURIComponent(id), { signal });
      renderJobHeader(job);
      $("job-body").hidden = false;
      await loadDetails(id, signal);
      loadDashboard(id, signal).catch(report);
      if (!TERMINAL.has(job.status)) follow(id, signal);
      else $("job-live").textContent = "finished";
    } catch (err) {
      if (err instanceof ApiFailure && err.status === 404) $("job-id").textContent = id;
      report(err);
    }
  }

  function confirmDialog(text, label) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-yes").textContent = label;
    return new Promise((resolve) => {
      const finish = (answer) => {
        $("confirm-yes").onclick = null;
        $("confirm-no").onclick = null;
        dialog.close();
        resolve(answer);
      };
      $("confirm-yes").onclick = () => finish(true);
      $("confirm-no").onclick = () => finish(false);
      dialog.oncancel = () => finish(false);
      dialog.showModal();
    });
  }

  async function cancelJob() {
    const id = jobPage.id;
    if (!(await confirmDialog("Cancel job " + id + "? Trials in progress are stopped.", "Cancel job"))) return;
    try {
      const job = await apiJson("/v1/jobs/" + encodeURIComponent(id) + "/cancel", { method: "POST" });
      renderJobHeader(job);
      showBanner("Cancellation requested for job " + id + ".", "info");
      if (TERMINAL.has(job.status)) $("job-live").textContent = "finished";
    } catch (err) {
      report(err);
    }
  }

  async function deleteJob() {
    const id = jobPage.id;
    if (!(await confirmDialog("Delete job " + id + " and all its files? This cannot be undone.", "Delete job"))) return;
    try {
      await api("/v1/jobs/" + encodeURIComponent(id), { method: "DELETE" });
      location.hash = "#/jobs";
      setTimeout(() => showBanner("Deleted job " + id + ".", "info"), 0);
    } catch (err) {
      report(err);
    }
  }

  // ------------------------------------------------------------------ submission form
  let config = null; // /ui/config: the spec's JSON schema and limits, as the server checks them

  async function loadConfig() {
    if (!config) config = await apiJson("/ui/config");
    return config;
  }

  function schemaOf(path) {
    const schema = config.spec_schema;
    let props = schema.properties;
    const parts = path.split(".");
    let prop = null;
    for (const [i, part] of parts.entries()) {
      prop = props[part];
      if (!prop) return null;
      if (i < parts.length - 1) {
        const ref = prop.$ref || (prop.allOf && prop.allOf[0].$ref);
        const target = ref ? schema.$defs[ref.split("/").pop()] : prop;
        props = target.properties;
      }
    }
    return prop;
  }

  // The non-null branch of an Optional[...] property, and whether null is allowed.
  function branch(prop) {
    if (!prop.anyOf) return { rule: prop, nullable: false };
    const rule = prop.anyOf.find((p) => p.type !== "null") || {};
    return { rule, nullable: prop.anyOf.some((p) => p.type === "null") };
  }

  function defaultOf(path) {
    const prop = schemaOf(path);
    if (prop && prop.default !== undefined && prop.default !== null) return prop.default;
    const [outer, inner] = path.split(".");
    if (inner) {
      const parent = schemaOf(outer);
      const ref = parent && (parent.$ref || (parent.allOf && parent.allOf[0].$ref));
      const def = ref ? config.spec_schema.$defs[ref.split("/").pop()] : null;
      const value = def && def.properties[inner] && def.properties[inner].default;
      if (value !== undefined) return value;
    }
    return null;
  }

  // Checks one value against its schema property; returns a message or "".
  function checkValue(path, raw) {
    const prop = schemaOf(path);
    if (!prop) return "";
    const { rule, nullable } = branch(prop);
    const label = path;
    if (raw === "" || raw === null) {
      if (nullable || prop.default !== undefined) return "";
      return label + " is required";
    }
    if (rule.enum) return rule.enum.includes(raw) ? "" : label + " must be one of " + rule.enum.join(", ");
    if (rule.type === "integer" || rule.type === "number") {
      const n = Number(raw);
      if (!Number.isFinite(n)) return label + " must be a number";
      if (rule.type === "integer" && !Number.isInteger(n)) return label + " must be a whole number";
      if (rule.minimum !== undefined && n < rule.minimum) return label + " must be ≥ " + rule.minimum;
      if (rule.maximum !== undefined && n > rule.maximum) return label + " must be ≤ " + rule.maximum;
      if (rule.exclusiveMinimum !== undefined && n <= rule.exclusiveMinimum) return label + " must be > " + rule.exclusiveMinimum;
      if (rule.exclusiveMaximum !== undefined && n >= rule.exclusiveMaximum) return label + " must be < " + rule.exclusiveMaximum;
      return "";
    }
    if (rule.type === "string") {
      if (rule.minLength !== undefined && raw.length < rule.minLength) return label + " must have at least " + rule.minLength + " characters";
      if (rule.maxLength !== undefined && raw.length > rule.maxLength) return label + " must have at most " + rule.maxLength + " characters";
    }
    return "";
  }

  function fillSelect(select, path) {
    const { rule } = branch(schemaOf(path));
    const value = defaultOf(path);
    select.replaceChildren(...rule.enum.map((v) => h("option", { value: v, text: v, selected: v === value })));
  }

  let formReady = false;

  async function showSubmit() {
    showView("submit");
    try {
      await loadConfig();
    } catch (err) {
      report(err);
      return;
    }
    if (formReady) return;
    for (const el of document.querySelectorAll("#submit-form [data-field]")) {
      const path = el.dataset.field;
      if (el.tagName === "SELECT") fillSelect(el, path);
      else if (path !== "arch") {
        const value = defaultOf(path);
        if (value !== null && !Array.isArray(value)) el.value = value;
        const { rule } = branch(schemaOf(path) || {});
        if (rule.minimum !== undefined) el.min = rule.minimum;
        if (rule.maximum !== undefined) el.max = rule.maximum;
      }
    }
    formReady = true;
  }

  function datasetChoice() {
    const choice = $("f-dataset").value;
    $("dataset-file-row").hidden = choice !== "upload";
    $("dataset-path-row").hidden = choice !== "server";
    return choice === "server" ? $("f-dataset-path").value.trim() : choice;
  }

  function setError(path, message) {
    const slot = document.querySelector('[data-error-for="' + path + '"]');
    if (slot) slot.textContent = message;
    const input = document.querySelector('#submit-form [data-field="' + path + '"]');
    if (input) input.classList.toggle("invalid", Boolean(message));
  }

  function checkFile(file, path, suffixes, required) {
    if (!file) return required ? "choose a file" : "";
    const name = file.name.toLowerCase();
    if (!suffixes.some((s) => name.endsWith(s))) return "the file must end in " + suffixes.join(", ");
    if (file.size > config.max_upload_bytes)
      return "the file is " + fmtBytes(file.size) + "; the server accepts at most " + fmtBytes(config.max_upload_bytes);
    if (file.size === 0) return "the file is empty";
    return "";
  }

  // Builds the spec from the form; returns {spec, errors} (errors by field path).
  function readForm() {
    const errors = {};
    const spec = { schedule: {} };
    for (const el of document.querySelectorAll("#submit-form [data-field]")) {
      const path = el.dataset.field;
      const raw = el.value.trim();
      const message = checkValue(path, raw);
      if (message) errors[path] = message;
      if (raw === "") continue;
      const { rule } = branch(schemaOf(path));
      const value = rule.type === "integer" || rule.type === "number" ? Number(raw) : raw;
      const [outer, inner] = path.split(".");
      if (inner) spec[outer][inner] = value;
      else spec[outer] = value;
    }
    if (spec.arch && !new RegExp(config.arch_pattern).test(spec.arch)) {
      errors.arch = "arch must be 'rankopt:<net>', 'torchvision:<model>' or an allowed 'package.module:function'";
    }
    const s = spec.schedule;
    if (s.kind !== "constant" && s.base_lr !== undefined && s.max_lr !== undefined && s.base_lr > s.max_lr) {
      errors["schedule.base_lr"] = "the base learning rate must not exceed the max learning rate";
    }
    spec.pareto = $("f-pareto").checked;
    spec.dataset = datasetChoice();
    const datasetOk =
      config.builtin_datasets.includes(spec.dataset) || spec.dataset === config.dataset_upload ||
      new RegExp(config.server_dataset_pattern).test(spec.dataset);
    if (!datasetOk) errors.dataset = "name a server dataset as folder:PATH or cifar10:PATH";
    const weights = $("f-weights").files[0];
    const weightsError = checkFile(weights, "weights", config.weights_suffixes, true);
    if (weightsError) errors.weights = weightsError;
    const dataFile = $("f-dataset-file").files[0];
    if (spec.dataset === config.dataset_upload) {
      const dataError = checkFile(dataFile, "dataset_file", config.dataset_suffixes, true);
      if (dataError) errors.dataset_file = dataError;
    }
    return { spec, errors, weights, dataFile };
  }

  async function submitJob(event) {
    event.preventDefault();
    const { spec, errors, weights, dataFile } = readForm();
    for (const slot of document.querySelectorAll("#submit-form [data-error-for]")) setError(slot.dataset.errorFor, "");
    for (const [path, message] of Object.entries(errors)) setError(path, message);
    const summary = $("submit-error");
    const count = Object.keys(errors).length;
    summary.hidden = count === 0;
    if (count) {
      summary.textContent = "Fix the " + (count === 1 ? "field" : count + " fields") + " marked above; nothing was sent.";
      return;
    }
    const body = new FormData();
    body.append("spec", new Blob([JSON.stringify(spec)], { type: "application/json" }));
    body.append("weights", weights, weights.name);
    if (spec.dataset === config.dataset_upload) body.append("dataset", dataFile, dataFile.name);
    const button = $("submit-button");
    button.disabled = true;
    try {
      const job = await apiJson("/v1/jobs", {
        method: "POST",
        body,
        headers: { "Idempotency-Key": crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) },
      });
      location.hash = "#/jobs/" + encodeURIComponent(job.id);
    } catch (err) {
      if (err instanceof ApiFailure && err.status !== 401) {
        summary.textContent = "The server refused the job: " + err.readable;
        summary.hidden = false;
      } else report(err);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ wiring
  function init() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut(""));
    $("jobs-filter").addEventListener("change", () => {
      const status = $("jobs-filter").value;
      location.hash = status ? "#/jobs?status=" + status : "#/jobs";
    });
    $("jobs-refresh").addEventListener("click", () => route());
    $("jobs-more").addEventListener("click", () => loadJobs(pageAbort.signal, true).catch(report));
    for (const th of $("trials-table").querySelectorAll("th[data-key]")) {
      th.addEventListener("click", () => sortBy(th.dataset.key));
    }
    $("job-cancel").addEventListener("click", cancelJob);
    $("job-delete").addEventListener("click", deleteJob);
    $("f-dataset").addEventListener("change", datasetChoice);
    $("submit-form").addEventListener("submit", submitJob);
    window.addEventListener("hashchange", route);
    route();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
