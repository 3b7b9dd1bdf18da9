// The public HTTP API, with the signed-in key. Every failure becomes an ApiError
// carrying the service's error code and message, so pages can say it in words.

const KEY = "facefleet.key";

export class ApiError extends Error {
  constructor(status, code, message, requestId, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.details = details;
  }
  toString() {
    return `${this.message} (${this.code}${this.status ? ", HTTP " + this.status : ""})`;
  }
}

// the key lives in sessionStorage: this tab only, gone when the tab closes
export const key = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (k) => sessionStorage.setItem(KEY, k),
  clear: () => sessionStorage.removeItem(KEY),
};

export function authHeaders() {
  const k = key.get();
  return k ? { Authorization: `Bearer ${k}` } : {};
}

export function url(path, query) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, v);
  }
  return u.pathname + u.search;
}

async function errorOf(res) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: said below */ }
  const e = body && body.error;
  if (e) return new ApiError(res.status, e.code, e.message, e.request_id, e.details);
  return new ApiError(res.status, "http_" + res.status, `the service answered ${res.status} ${res.statusText}`);
}

// one call: {json} or {form} body, {query}; answers parsed JSON, text, or null (204)
export async function call(method, path, opts = {}) {
  const headers = { ...authHeaders(), ...(opts.headers || {}) };
  let body;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.json);
  } else if (opts.form) {
    body = opts.form;
  }
  let res;
  try {
    res = await fetch(url(path, opts.query), { method, headers, body, signal: opts.signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network_error", `the service could not be reached (${err.message})`);
  }
  if (!res.ok) throw await errorOf(res);
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}

export const get = (path, query, opts) => call("GET", path, { ...opts, query });

// an upload with progress (fetch cannot report it): resolves {status, body}
export function upload(path, form, { headers = {}, onProgress } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries({ ...authHeaders(), ...headers })) xhr.setRequestHeader(k, v);
    if (onProgress) xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* said below */ }
      if (xhr.status >= 200 && xhr.status < 300) return resolve({ status: xhr.status, body });
      const e = body && body.error;
      reject(e ? new ApiError(xhr.status, e.code, e.message, e.request_id, e.details)
        : new ApiError(xhr.status, "http_" + xhr.status, `the service answered ${xhr.status}`));
    };
    xhr.onerror = () => reject(new ApiError(0, "network_error", "the upload could not reach the service"));
    xhr.send(form);
  });
}

// an image the API answers (a thumbnail) as an object URL; null when there is none
export async function imageUrl(path) {
  const res = await fetch(path, { headers: authHeaders() });
  if (!res.ok) return null;
  return URL.createObjectURL(await res.blob());
}
