// Signing in and out, and where errors go: a 401 after sign-in means the key was revoked.

import { $, showBanner } from "./dom.js";
import { ApiFailure, api, forgetKey, setKey } from "./api.js";
import { route, stopPage } from "./router.js";

const signOutHooks = [];

// fn() empties what a view shows of the key that signs out.
export function onSignOut(fn) {
  signOutHooks.push(fn);
}

export function signOut(reason) {
  forgetKey();
  stopPage();
  $("jobs-table").querySelector("tbody").replaceChildren();
  $("key-label").textContent = "";
  for (const fn of signOutHooks) fn(); // nothing of this key stays in the page
  if (location.hash !== "#/signin") location.hash = "#/signin";
  else route();
  if (reason) showBanner(reason);
}

// A 401 after sign-in means the key was revoked: forget it. Other errors go to the banner.
export function report(err) {
  if (err && err.name === "AbortError") return;
  if (err instanceof ApiFailure && err.status === 401) {
    signOut("Signed out: " + err.readable);
    return;
  }
  showBanner(err instanceof ApiFailure ? err.readable : String(err));
}

export async function signIn(event) {
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
  setKey(key);
  // Back to the page that asked for a key, or to the jobs list.
  if (!location.hash || location.hash === "#/signin") location.hash = "#/jobs";
  else route();
}
