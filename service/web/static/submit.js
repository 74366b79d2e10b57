// The submission form: checked in the page against the spec's JSON schema from /ui/config, as
// the server checks it, before anything is sent.

import { $, fmtBytes, h } from "./dom.js";
import { ApiFailure, apiJson } from "./api.js";
import { showView } from "./router.js";
import { report } from "./session.js";

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

export async function showSubmit() {
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

export function datasetChoice() {
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

export async function submitJob(event) {
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
