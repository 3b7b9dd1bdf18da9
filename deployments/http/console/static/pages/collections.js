// Collections: each with its model and face and person counts; create, and
// delete after a confirmation that names what will be lost.

import { call, get } from "../api.js";
import { can, reload } from "../app.js";
import { busy, confirmDialog, field, h, showError, table, when } from "../ui.js";

// started while the key is checked (app.js)
export function prefetch() {
  const collections = get("/v1/collections");
  collections.catch(() => {});  // awaited by render, or dropped
  return { collections };
}

export async function render({ signal, prefetched }) {
  const slot = h("div", { "aria-live": "polite" });
  const view = h("section", {}, h("h1", {}, "Collections"), slot);
  if (can("admin")) view.append(createForm(signal));
  const { collections } = await ((prefetched && prefetched.collections) || get("/v1/collections", null, { signal }));
  if (!collections.length) {
    slot.append(h("p", { class: "muted" }, "No collection yet." + (can("admin") ? " Create one below, or enrol photos into a new name." : "")));
    return view;
  }
  const rows = collections.map((c) => {
    const faces = h("td", { class: "num" }, "…");
    const persons = h("td", { class: "num" }, "…");
    const tr = h("tr", { "data-collection": c.collection },
      h("th", { scope: "row" }, h("a", { href: `#/people/${encodeURIComponent(c.collection)}` }, c.collection)),
      h("td", {}, c.model), faces, persons, h("td", {}, when(c.created_at)),
      h("td", {}, can("admin") ? h("button", { class: "danger small", "aria-label": `Delete collection ${c.collection}`,
        onclick: (e) => drop(e.target, c.collection, faces.textContent, persons.textContent) }, "Delete") : ""));
    // counts arrive one by one; the table is shown at once
    get(`/v1/collections/${encodeURIComponent(c.collection)}`, null, { signal }).then((st) => {
      faces.textContent = st.faces; persons.textContent = st.persons;
    }).catch((err) => { faces.textContent = "?"; showError(err); });
    return tr;
  });
  slot.append(table(["Collection", "Model", "Faces", "Persons", "Created", ""], rows));
  return view;
}

function createForm(signal) {
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", autocomplete: "off" });
  const model = h("select", { name: "model" }, h("option", { value: "" }, "default model"));
  get("/v1/models", null, { signal }).then((m) => {
    for (const e of m.embedders.filter((e) => e.installed)) model.append(h("option", { value: e.name }, `${e.name} (${e.dim}-d)${e.default ? " — default" : ""}`));
  }).catch(showError);
  const out = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary" }, "Create collection");
  return h("form", { class: "card", "aria-labelledby": "create-h", onsubmit: (e) => {
    e.preventDefault();
    out.replaceChildren();
    busy(submit, call("POST", "/v1/collections", { json: { name: name.value.trim(), model: model.value || null } })
      .then(() => reload())
      .catch((err) => showError(err, out)));
  } },
  h("h2", { id: "create-h" }, "New collection"),
  h("div", { class: "row" }, field("Name", name, "letters, digits, _ . -"), field("Model", model)), submit, out);
}

async function drop(button, collection, faces, persons) {
  const ok = await confirmDialog(`Delete collection ${collection}?`,
    `Every face (${faces}) and person (${persons}) enrolled in ${collection} will be lost, with their templates. This cannot be undone.`,
    "Delete collection");
  if (!ok) return;
  try {
    await busy(button, call("DELETE", `/v1/collections/${encodeURIComponent(collection)}`));
    button.closest("tr").remove();
  } catch (err) {
    showError(err);
  }
}
