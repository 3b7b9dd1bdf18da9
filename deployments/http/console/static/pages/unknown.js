// Unknown faces: the faces of persons without a name, grouped into candidate people
// (POST .../clusters as a job, polled with its progress, so the page never blocks),
// each as a row of thumbnails with the named person it most resembles. A cluster can
// be named as a new person, assigned to an existing person (both: a merge of its
// persons, POST .../persons/{id}:merge, then a rename), or dismissed for this tab.

import { call, get } from "../api.js";
import { can } from "../app.js";
import { thumbnail } from "../thumbs.js";
import { busy, field, h, placeholder, showError } from "../ui.js";

const SHOWN = 8;  // thumbnails per cluster row
const DISMISSED = "facefleet.dismissed";

function dismissed() {
  try { return new Set(JSON.parse(sessionStorage.getItem(DISMISSED) || "[]")); } catch { return new Set(); }
}

function dismiss(id) {
  const all = dismissed();
  all.add(id);
  sessionStorage.setItem(DISMISSED, JSON.stringify([...all]));
}

// a person id made from a name: readable, and unique enough with a short suffix
export function personIdFor(name) {
  const slug = name.toLowerCase().normalize("NFKD").replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40);
  return `${slug || "person"}-${Math.random().toString(36).slice(2, 6)}`;
}

export async function render({ args, signal }) {
  const { collections } = await get("/v1/collections", null, { signal });
  const collection = args[0] || (collections[0] && collections[0].collection);
  const view = h("section", {}, h("h1", {}, "Unknown faces"));
  if (!collection) { view.append(h("p", { class: "muted" }, "No collection yet.")); return view; }
  const pick = h("select", { onchange: () => (location.hash = `#/unknown/${encodeURIComponent(pick.value)}`) },
    collections.map((c) => h("option", { value: c.collection, selected: c.collection === collection }, c.collection)));
  const progress = h("progress", { max: 1, value: 0, "aria-label": "Clustering progress" });
  const status = h("p", { class: "muted", "aria-live": "polite" }, "Grouping the faces of unnamed persons…");
  const list = h("ul", { class: "clusters", "aria-label": `Clusters of ${collection}`, "aria-busy": "true" });
  const base = `/v1/collections/${encodeURIComponent(collection)}`;
  view.append(h("div", { class: "row" }, field("Collection", pick)), h("p", {}, progress, " ", status), list);

  (async () => {
    let job = await call("POST", `${base}/clusters`, { json: { job: true }, signal });
    while (job.status === "running") {
      progress.value = job.progress || 0;
      await new Promise((r) => setTimeout(r, 400));
      job = await get(`${base}/clusters/jobs/${encodeURIComponent(job.job_id)}`, null, { signal });
    }
    if (job.status === "failed") throw Object.assign(new Error(job.error.message), { code: job.error.code });
    const out = job.result;
    progress.value = 1;
    const hidden = dismissed();
    const shown = out.clusters.filter((c) => !hidden.has(c.cluster_id));
    status.textContent = `${out.faces} faces of unnamed persons: ${out.clusters.length} clusters` +
      ` (${out.clusters.length - shown.length} dismissed), ${out.unclustered} faces alone.`;
    list.replaceChildren(...shown.map((c) => row(collection, base, c)));
    if (!shown.length) list.append(h("li", { class: "muted" }, "No cluster to review."));
    list.setAttribute("aria-busy", "false");
  })().catch((err) => { status.textContent = ""; showError(err); });
  return view;
}

function row(collection, base, c) {
  const thumbs = h("div", { class: "thumbs" }, c.face_ids.slice(0, SHOWN).map((id) => {
    const slot = h("span", { class: "thumb-slot" }, placeholder("a face of this cluster"));
    thumbnail(slot, collection, id, "a face of this cluster");
    return slot;
  }), c.size > SHOWN ? h("span", { class: "muted" }, `+${c.size - SHOWN}`) : null);
  const out = h("div", { "aria-live": "polite" });
  const li = h("li", { class: "cluster card", "data-cluster": c.cluster_id },
    h("h2", {}, `${c.size} faces`, h("small", { class: "muted" }, ` · ${c.person_ids.length} unnamed person(s)`)),
    thumbs,
    c.suggested ? h("p", {}, "Looks like ",
      h("a", { href: `#/person/${encodeURIComponent(collection)}/${encodeURIComponent(c.suggested.person_id)}` },
        c.suggested.name || c.suggested.person_id),
      h("span", { class: "muted" }, ` (distance ${c.suggested.distance.toFixed(3)})`)) : null);
  if (can("write")) li.append(actions(base, c, li, out));
  li.append(out);
  return li;
}

function actions(base, c, li, out) {
  const name = h("input", { type: "text", name: "name", required: true, maxlength: 200 });
  const target = h("input", { type: "text", name: "person", required: true, maxlength: 128,
    value: c.suggested ? c.suggested.person_id : "" });
  // every person of the cluster into one: the first (or the target) keeps its id
  const merge = (into) => {
    const from = c.person_ids.filter((p) => p !== into);
    return from.length ? call("POST", `${base}/persons/${encodeURIComponent(into)}:merge`, { json: { from } }) : Promise.resolve();
  };
  const done = (text) => { li.classList.add("done"); out.replaceChildren(h("p", {}, text)); };
  return h("div", { class: "row" },
    h("form", { onsubmit: (e) => {
      e.preventDefault();
      const pid = personIdFor(name.value.trim());
      busy(e.submitter, merge(pid).then(() => call("PATCH", `${base}/persons/${encodeURIComponent(pid)}`, { json: { name: name.value.trim() } })))
        .then(() => done(`Named ${name.value.trim()} (${pid}).`)).catch((err) => showError(err, out));
    } }, field("Name as a new person", name), h("button", { type: "submit" }, "Name")),
    h("form", { onsubmit: (e) => {
      e.preventDefault();
      busy(e.submitter, merge(target.value.trim()))
        .then(() => done(`Assigned to ${target.value.trim()}.`)).catch((err) => showError(err, out));
    } }, field("Assign to person id", target), h("button", { type: "submit" }, "Assign")),
    h("button", { type: "button", onclick: () => { dismiss(c.cluster_id); li.remove(); } }, "Dismiss"));
}
