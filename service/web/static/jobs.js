// The jobs list view: newest first, filtered by status, refreshed while a job runs.

import { $, TERMINAL, fmtDate, fmtPct, fmtRatio, h } from "./dom.js";
import { apiJson } from "./api.js";
import { refreshLater, showView } from "./router.js";
import { report } from "./session.js";

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

export async function loadJobs(signal, append) {
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
    refreshLater(() => loadJobs(signal, false).catch(report), 3000);
  }
}

export function showJobs(signal) {
  showView("jobs");
  const match = /[?&]status=([A-Z]+)/.exec(location.hash);
  $("jobs-filter").value = match ? match[1] : "";
  jobsCursor = null;
  loadJobs(signal, false).catch(report);
}
