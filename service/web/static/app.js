// rankopt web page: a small single-page app over the /v1 API. Plain JavaScript, no build step.
//
// The API key is kept in sessionStorage (this tab only) and sent as "Authorization: Bearer" on
// every request; it never goes into a URL. Live progress reads /events with fetch() streaming,
// since EventSource cannot send the header. Everything shown is built with textContent, never
// innerHTML, so nothing a job's spec holds can run as markup.
//
// The page is ES modules (no build step): dom, api, router, session, sse, plot and the views
// jobs, job and submit; this one wires them to the markup.

import { $ } from "./dom.js";
import { cancelJob, deleteJob, resetJobView, showJob, sortBy } from "./job.js";
import { loadJobs, showJobs } from "./jobs.js";
import { pageSignal, route, setViews } from "./router.js";
import { onSignOut, report, signIn, signOut } from "./session.js";
import { datasetChoice, showSubmit, submitJob } from "./submit.js";

setViews({ jobs: showJobs, job: showJob, submit: showSubmit });
onSignOut(resetJobView);

function init() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("jobs-filter").addEventListener("change", () => {
    const status = $("jobs-filter").value;
    location.hash = status ? "#/jobs?status=" + status : "#/jobs";
  });
  $("jobs-refresh").addEventListener("click", () => route());
  $("jobs-more").addEventListener("click", () => loadJobs(pageSignal(), true).catch(report));
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
