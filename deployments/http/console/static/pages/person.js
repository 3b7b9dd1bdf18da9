// One person: faces with thumbnails; rename, edit labels, delete a face, forget
// the person, merge into another person (POST .../persons/{target}:merge with from: [this one]).

import { call, get } from "../api.js";
import { can, go, reload } from "../app.js";
import { thumbnail } from "../thumbs.js";
import { busy, confirmDialog, field, h, placeholder, showError, when } from "../ui.js";

export async function render({ args, signal }) {
  const [collection, personId] = args;
  const base = `/v1/collections/${encodeURIComponent(collection)}/persons/${encodeURIComponent(personId)}`;
  const p = await get(base, null, { signal });
  const out = h("div", { "aria-live": "polite" });
  const view = h("section", {},
    h("p", {}, h("a", { href: `#/people/${encodeURIComponent(collection)}` }, `← People of ${collection}`)),
    h("h1", {}, p.name || p.person_id),
    h("p", {}, h("code", {}, p.person_id), ` · ${p.faces.length} face${p.faces.length === 1 ? "" : "s"} · enrolled ${when(p.created_at)}`),
    labelsList(p.labels), out);

  const faces = h("ul", { class: "grid faces", "aria-label": "Faces" }, p.faces.map((f) => {
    const slot = h("span", { class: "thumb-slot" }, placeholder(`no thumbnail of face ${f.face_id}`));
    thumbnail(slot, collection, f.face_id, `face ${f.face_id}`);
    return h("li", { "data-face": f.face_id }, slot, h("code", { class: "small" }, f.face_id.slice(0, 12) + "…"),
      h("span", { class: "small" }, when(f.created_at)),
      can("write") ? h("button", { class: "danger small", "aria-label": `Delete face ${f.face_id}`, onclick: async (e) => {
        if (!(await confirmDialog("Delete this face?", `Face ${f.face_id} of ${p.name || p.person_id} and its template will be lost.`, "Delete face"))) return;
        busy(e.target, call("DELETE", `/v1/collections/${encodeURIComponent(collection)}/faces/${encodeURIComponent(f.face_id)}`))
          .then(reload).catch((err) => showError(err, out));
      } }, "Delete") : null);
  }));
  view.append(h("h2", {}, "Faces"), faces);
  if (can("write")) view.append(editForms(collection, p, base, out));
  return view;
}

function labelsList(labels) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return h("p", { class: "muted" }, "No labels.");
  return h("dl", { class: "labels" }, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function parseLabels(text) {
  const labels = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const i = line.indexOf("=");
    if (i < 1) throw new Error(`a label is key=value, one per line: "${line}"`);
    labels[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return labels;
}

function editForms(collection, p, base, out) {
  const name = h("input", { name: "name", value: p.name || "", maxlength: 256 });
  const labels = h("textarea", { name: "labels", rows: 3 });
  labels.value = Object.entries(p.labels || {}).map(([k, v]) => `${k}=${v}`).join("\n");
  const into = h("input", { name: "into", required: true, autocomplete: "off", maxlength: 128 });
  const patch = (button, body) => busy(button, call("PATCH", base, { json: body })).then(reload).catch((err) => showError(err, out));

  return h("div", { class: "edit" },
    h("form", { class: "card", onsubmit: (e) => {
      e.preventDefault();
      patch(e.submitter, { name: name.value.trim() || null });
    } }, h("h2", {}, "Rename"), field("Name", name), h("button", { type: "submit" }, "Save name")),
    h("form", { class: "card", onsubmit: (e) => {
      e.preventDefault();
      let body;
      try { body = { labels: parseLabels(labels.value) }; } catch (err) { showError(err, out); return; }
      patch(e.submitter, body);
    } }, h("h2", {}, "Labels"), field("Labels", labels, "key=value, one per line"), h("button", { type: "submit" }, "Save labels")),
    h("form", { class: "card", onsubmit: async (e) => {
      e.preventDefault();
      const target = into.value.trim();
      if (!(await confirmDialog(`Merge ${p.person_id} into ${target}?`,
        `The ${p.faces.length} face(s) of ${p.name || p.person_id} move to ${target}, which keeps its name and labels; ${p.person_id} is forgotten.`, "Merge"))) return;
      const persons = `/v1/collections/${encodeURIComponent(collection)}/persons`;
      busy(e.submitter, call("POST", `${persons}/${encodeURIComponent(target)}:merge`, { json: { from: [p.person_id] } }))
        .then(() => go(`#/person/${encodeURIComponent(collection)}/${encodeURIComponent(target)}`))
        .catch((err) => showError(err, out));
    } }, h("h2", {}, "Merge into another person"), field("Person id to keep", into), h("button", { type: "submit" }, "Merge")),
    h("div", { class: "card" }, h("h2", {}, "Forget"),
      h("p", {}, "Erase this person and every face, everywhere the service keeps them."),
      h("button", { type: "button", class: "danger", onclick: async (e) => {
        if (!(await confirmDialog(`Forget ${p.name || p.person_id}?`,
          `Person ${p.person_id} and all ${p.faces.length} face(s) with their templates will be erased. This cannot be undone.`, "Forget person"))) return;
        busy(e.target, call("DELETE", base)).then(() => go(`#/people/${encodeURIComponent(collection)}`))
          .catch((err) => showError(err, out));
      } }, "Forget this person")));
}
