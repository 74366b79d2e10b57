// One job's view: its facts and progress, trials, plot, result and downloads, followed live.

import { $, TERMINAL, fmtBytes, fmtDate, fmtInt, fmtNum, fmtPct, fmtRatio, fmtSeconds, h, showBanner } from "./dom.js";
import { ApiFailure, api, apiJson } from "./api.js";
import { renderPlot } from "./plot.js";
import { showView } from "./router.js";
import { report } from "./session.js";
import { readEvents } from "./sse.js";

const jobPage = { id: null, job: null, trials: [], result: null, sort: { key: "number", dir: 1 }, open: new Set() };

function fact(list, name, value) {
  list.append(h("dt", { text: name }), h("dd", {}, value));
}

export function renderJobHeader(job) {
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

export function sortBy(key) {
  const sort = jobPage.sort;
  if (sort.key === key) sort.dir = -sort.dir;
  else {
    sort.key = key;
    sort.dir = key === "number" || key === "state" || key === "seed" ? 1 : -1;
  }
  renderTrials();
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
  fact(facts, "Accuracy (validation)", fmtPct(b.accuracy) + " → " + fmtPct(f.accuracy) + " (drop " + fmtNum(f.accuracy_drop) + " pt)");
  if (result.test) {
    const met = f.test_constraint_met === false ? ", beyond the tolerance" : ", within the tolerance";
    fact(facts, "Accuracy (test, held out)", fmtPct(b.test_accuracy) + " → " + fmtPct(f.test_accuracy) + " (drop " + fmtNum(f.test_accuracy_drop) + " pt" + met + ")");
  } else {
    fact(facts, "Accuracy (test, held out)", "no test split" + (result.test_note ? ": " + result.test_note : ""));
  }
  fact(facts, "Parameters", fmtInt(b.params) + " → " + fmtInt(f.params) + " (" + fmtRatio(r.params) + ")");
  fact(facts, "MACs", fmtInt(b.macs) + " → " + fmtInt(f.macs) + " (" + fmtRatio(r.macs) + ")");
  fact(facts, "Chosen trial", result.chosen_trial === null ? "none (the original model is kept)" : "#" + result.chosen_trial);
  fact(facts, "Tolerance met (validation)", f.constraint_met === false ? "no" : "yes");
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
  renderPlot(jobPage);
  renderArtifacts(artifacts.artifacts);
}

async function loadDashboard(id, signal) {
  const info = await apiJson("/v1/jobs/" + encodeURIComponent(id) + "/dashboard", { signal });
  const link = $("job-dashboard");
  link.hidden = !info.url;
  if (info.url) link.href = info.url;
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
export function resetJobView() {
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

export async function showJob(id, signal) {
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

export async function cancelJob() {
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

export async function deleteJob() {
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
