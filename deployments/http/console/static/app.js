// The console's shell: who is signed in (GET /v1/whoami), the navigation the
// key's scopes allow, and a hash router that renders one page at a time.

import { ApiError, get, key } from "./api.js";
import { clearErrors, describe, field, h, showError } from "./ui.js";

export const session = { authEnabled: false, scopes: [], keyId: null, collections: null };
export const can = (scope) => session.scopes.includes(scope);

const PAGES = [
  { path: "collections", label: "Collections", scope: "read", load: () => import("./pages/collections.js") },
  { path: "people", label: "People", scope: "read", load: () => import("./pages/people.js") },
  { path: "person", scope: "read", load: () => import("./pages/person.js") },
  { path: "unknown", label: "Unknown faces", scope: "read", load: () => import("./pages/unknown.js") },
  { path: "enrol", label: "Enrol", scope: "write", load: () => import("./pages/enrol.js") },
  { path: "try", label: "Try it", scope: "read", load: () => import("./pages/tryit.js") },
  { path: "keys", label: "Keys", scope: "admin", needsAuth: true, load: () => import("./pages/keys.js") },
  { path: "audit", label: "Audit", scope: "admin", load: () => import("./pages/audit.js") },
  { path: "status", label: "Status", scope: "read", load: () => import("./pages/status.js") },
];

// each render gets a signal: a page left before its requests answer drops them
let current = null;

export function go(hash) { location.hash = hash; }
// the same page again, fresh (after a change it made)
export function reload() { route(); }

function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || "collections", args: parts.slice(1), query: new URLSearchParams(query) };
}

async function whoami() {
  try {
    const me = await get("/v1/whoami");
    Object.assign(session, { authEnabled: me.auth_enabled, scopes: me.scopes, keyId: me.key_id, collections: me.collections });
    return true;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return false;
    throw err;
  }
}

function renderChrome() {
  const banner = document.getElementById("banner");
  banner.replaceChildren(session.authEnabled ? "" :
    h("p", { class: "banner warn" }, "API keys are off: anyone who reaches this service can read and change everything."));
  const nav = document.getElementById("nav");
  nav.replaceChildren(...PAGES.filter((p) => p.label && can(p.scope) && (!p.needsAuth || session.authEnabled))
    .map((p) => h("a", { href: "#/" + p.path, "data-page": p.path }, p.label)));
  const who = document.getElementById("who");
  if (!session.authEnabled) who.replaceChildren("keys off");
  else who.replaceChildren(
    h("span", { "data-testid": "key-id" }, `key ${session.keyId} · ${session.scopes.join(", ")}`),
    h("button", { class: "link", onclick: signOut }, "Sign out"));
}

function signOut() {
  key.clear();
  Object.assign(session, { scopes: [], keyId: null });
  start();
}

function signIn(message) {
  document.getElementById("nav").replaceChildren();
  document.getElementById("who").replaceChildren();
  document.getElementById("banner").replaceChildren();
  const input = h("input", { type: "password", name: "key", autocomplete: "off", required: true });
  const err = h("div", { "aria-live": "assertive" });
  if (message) err.append(h("p", { class: "error" }, message));
  const form = h("form", { class: "card narrow", onsubmit: async (e) => {
    e.preventDefault();
    key.set(input.value.trim());
    try {
      if (await whoami()) { start(); return; }
      key.clear();
      err.replaceChildren(h("p", { class: "error" }, "This key was refused (unauthorized): check it and try again."));
    } catch (x) {
      key.clear();
      err.replaceChildren(h("p", { class: "error" }, describe(x)));
    }
    input.focus();
  } },
  h("h1", {}, "Sign in"),
  h("p", {}, "This service asks for an API key. It is kept for this tab only, until the tab closes."),
  field("API key", input), err, h("button", { type: "submit", class: "primary" }, "Sign in"));
  document.getElementById("main").replaceChildren(form);
  input.focus();
}

async function route() {
  clearErrors();
  const { name, args, query } = parseHash();
  const page = PAGES.find((p) => p.path === name);
  const main = document.getElementById("main");
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === name || (name === "person" && a.dataset.page === "people")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (current) current.abort();
  current = new AbortController();
  // the page being left cannot be acted on while the next one loads
  main.setAttribute("aria-busy", "true");
  if (!page || !can(page.scope)) {
    main.removeAttribute("aria-busy");
    main.replaceChildren(h("h1", {}, "Not available"),
      h("p", {}, page ? `This page needs a key with the '${page.scope}' scope.` : "There is no such page."));
    return;
  }
  const signal = current.signal;
  try {
    const mod = await page.load();
    // the prefetch serves the first render of the page it was made for, once
    const pre = prefetched && prefetched.hash === location.hash ? await prefetched.promise : null;
    prefetched = null;
    const view = await mod.render({ args, query, signal, prefetched: pre });
    if (signal.aborted) return;
    main.replaceChildren(view);
    main.focus({ preventScroll: true });
  } catch (err) {
    if (err.name === "AbortError") return;
    main.replaceChildren(h("h1", {}, "This page could not be shown"));
    showError(err, main);
  }
  main.removeAttribute("aria-busy");
}

// what the first page asked for while the key was being checked (its prefetch)
let prefetched = null;

export async function start() {
  // the page's code loads, and its first requests start, while the key is checked:
  // no round trip waits for another one it does not need
  const { name, args } = parseHash();
  const first = PAGES.find((p) => p.path === name);
  prefetched = null;
  if (first) {
    const hash = location.hash;
    const promise = first.load().then((m) => (m.prefetch ? m.prefetch(args) : null)).catch(() => null);
    prefetched = { hash, promise };
  }
  try {
    const ok = await whoami();
    if (!ok) { signIn(key.get() ? "The key kept for this tab was refused: sign in again." : null); key.clear(); return; }
  } catch (err) {
    document.getElementById("main").replaceChildren(h("h1", {}, "The service did not answer"));
    showError(err, document.getElementById("main"));
    return;
  }
  renderChrome();
  route();
}

window.addEventListener("hashchange", () => { if (session.scopes.length) route(); });
// an error nobody caught is still said, never dropped
window.addEventListener("unhandledrejection", (e) => showError(e.reason));
start();
