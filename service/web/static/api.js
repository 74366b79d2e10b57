// The /v1 API: the key kept in sessionStorage (this tab only) and sent as "Authorization: Bearer"
// on every request, never in a URL; a failed request is an ApiFailure with the server's code.

const KEY_STORAGE = "rankopt.apiKey";

export class ApiFailure extends Error {
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
export const getKey = () => sessionStorage.getItem(KEY_STORAGE);

export const setKey = (key) => sessionStorage.setItem(KEY_STORAGE, key);
export const forgetKey = () => sessionStorage.removeItem(KEY_STORAGE);

export async function api(path, options = {}) {
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

export const apiJson = async (path, options) => (await api(path, options)).json();
