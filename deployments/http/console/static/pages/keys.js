// API keys (admin): create one (its secret shown once, with a copy button), list
// the live keys and revoke one.

import { call, get } from "../api.js";
import { busy, confirmDialog, copyButton, field, h, showError, table, when } from "../ui.js";

const SCOPES = ["read", "write", "admin", "export"];

export async function render({ signal }) {
  const { keys } = await get("/v1/keys", null, { signal });
  const out = h("div", { "aria-live": "polite" });
  const name = h("input", { name: "name", required: true, maxlength: 128, autocomplete: "off" });
  const scopes = SCOPES.map((sc) => h("input", { type: "checkbox", name: "scope", value: sc, checked: sc === "read" }));
  const colls = h("input", { name: "collections", autocomplete: "off" });
  const ttl = h("input", { type: "number", name: "days", min: 1, step: 1 });
  const submit = h("button", { type: "submit", class: "primary" }, "Create key");
  const form = h("form", { class: "card", onsubmit: (e) => {
    e.preventDefault();
    const body = { name: name.value.trim(), scopes: scopes.filter((c) => c.checked).map((c) => c.value) };
    const list = colls.value.split(",").map((x) => x.trim()).filter(Boolean);
    if (list.length) body.collections = list;
    if (ttl.value) body.ttl_s = Number(ttl.value) * 86400;
    busy(submit, call("POST", "/v1/keys", { json: body }).then((k) => {
      out.replaceChildren(h("div", { class: "secret", role: "status" },
        h("p", {}, h("strong", {}, `Key ${k.id} created.`), " Its secret is shown this once: copy it now."),
        h("pre", { tabindex: "0", "data-testid": "new-secret" }, k.key), copyButton(() => k.key, "Copy secret")));
      tbody.prepend(row(k));
      form.reset();
    }).catch((err) => showError(err, out)));
  } },
  h("h2", {}, "New key"),
  h("div", { class: "row" }, field("Name", name, "what the key is for"),
    h("fieldset", { class: "scopes" }, h("legend", {}, "Scopes"), scopes.map((c) => h("label", {}, c, " ", c.value))),
    field("Collections", colls, "comma-separated; empty: every collection"), field("Expires in (days)", ttl, "empty: the longest allowed")),
  submit, out);
  const tbody = h("tbody", {}, keys.map(row));
  const t = h("table", {}, h("caption", {}, "Live keys"),
    h("thead", {}, h("tr", {}, ["Id", "Name", "Scopes", "Collections", "Created", "Last used", "Expires", ""].map((x) => h("th", { scope: "col" }, x)))), tbody);
  return h("section", {}, h("h1", {}, "API keys"), form, t);
}

function row(k) {
  return h("tr", { "data-key": k.id },
    h("th", { scope: "row" }, h("code", {}, k.id)), h("td", {}, k.name), h("td", {}, k.scopes.join(", ")),
    h("td", {}, k.collections ? k.collections.join(", ") : "all"), h("td", {}, when(k.created_at)),
    h("td", {}, when(k.last_used_at)), h("td", {}, when(k.expires_at)),
    h("td", {}, h("button", { class: "danger small", "aria-label": `Revoke key ${k.id}`, onclick: async (e) => {
      if (!(await confirmDialog(`Revoke key ${k.id} (${k.name})?`, "Every request with this key will be refused from now on. This cannot be undone.", "Revoke"))) return;
      busy(e.target, call("DELETE", `/v1/keys/${k.id}`)).then(() => e.target.closest("tr").remove()).catch((err) => showError(err));
    } }, "Revoke")));
}
