// People of a collection: a grid paged by cursor (one page of the API at a time,
// never the whole collection), with search by person id (exact, through the API)
// and by name or id part within the page shown (the API has no name search).

import { ApiError, get } from "../api.js";
import { can } from "../app.js";
import { thumbnail } from "../thumbs.js";
import { field, h, placeholder, showError } from "../ui.js";

const PAGE = 60;

// started while the key is checked (app.js): the list and the first page at once
export function prefetch(args) {
  if (!args[0]) return null;
  const out = { collections: get("/v1/collections"), page: persons(args[0], null) };
  for (const p of Object.values(out)) p.catch(() => {});  // awaited by render, or dropped
  return out;
}

export async function render({ args, query, signal, prefetched }) {
  // a collection named in the address: its first page is asked for with the list
  const pre = prefetched || prefetch(args) || {};
  const early = pre.page || null;
  const { collections } = await (pre.collections || get("/v1/collections", null, { signal }));
  const collection = args[0] || (collections[0] && collections[0].collection);
  const view = h("section", {}, h("h1", {}, "People"));
  if (!collection) { view.append(h("p", { class: "muted" }, "No collection yet.")); return view; }
  const pick = h("select", { onchange: () => (location.hash = `#/people/${encodeURIComponent(pick.value)}`) },
    collections.map((c) => h("option", { value: c.collection, selected: c.collection === collection }, c.collection)));
  const q = h("input", { type: "search", name: "q", value: query.get("q") || "", placeholder: "name or person id" });
  const grid = h("ul", { class: "grid", "aria-label": `Persons of ${collection}`, "aria-busy": "true" });
  const status = h("p", { class: "muted", "aria-live": "polite" });
  const prev = h("button", { type: "button", disabled: true }, "← Previous");
  const next = h("button", { type: "button", disabled: true }, "Next →");
  const pager = h("nav", { class: "row pager", "aria-label": "Pages of persons" }, prev, status, next);
  const cursors = [null];
  let at = 0, loaded = [];

  async function show(i, ready) {
    grid.setAttribute("aria-busy", "true");
    const page = await (ready || persons(collection, cursors[i], signal));
    at = i;
    cursors[i + 1] = page.next_cursor;
    loaded = page.persons;
    draw(filter(loaded));
    prev.disabled = i === 0;
    next.disabled = !page.next_cursor;
    status.textContent = `page ${i + 1} · ${page.persons.length} persons`;
    grid.setAttribute("aria-busy", "false");
  }

  function filter(persons) {
    const t = q.value.trim().toLowerCase();
    return t ? persons.filter((p) => (p.name || "").toLowerCase().includes(t) || p.person_id.toLowerCase().includes(t)) : persons;
  }

  function draw(persons) {
    grid.replaceChildren(...persons.map((p) => card(collection, p)));
    if (!persons.length) grid.append(h("li", { class: "muted" }, q.value ? "No person on this page matches." : "No person enrolled yet."));
  }

  async function search(e) {
    e.preventDefault();
    const t = q.value.trim();
    if (!t) { draw(loaded); return; }
    draw(filter(loaded));
    // an exact person id is one request, wherever it is in the collection
    try {
      const p = await get(`/v1/collections/${encodeURIComponent(collection)}/persons/${encodeURIComponent(t)}`, null, { signal });
      if (!filter(loaded).some((x) => x.person_id === p.person_id)) {
        grid.prepend(card(collection, { ...p, faces: p.faces.length, firstFace: p.faces[0] && p.faces[0].face_id }));
      }
    } catch (err) {
      if (!(err instanceof ApiError && (err.status === 404 || err.status === 422))) showError(err);
    }
  }

  prev.addEventListener("click", () => show(at - 1).catch(showError));
  next.addEventListener("click", () => show(at + 1).catch(showError));
  view.append(
    h("form", { class: "row", role: "search", onsubmit: search },
      field("Collection", pick), field("Search", q, "an exact person id, or part of a name on this page"),
      h("button", { type: "submit" }, "Search")),
    can("write") ? h("p", {}, h("a", { href: `#/enrol?collection=${encodeURIComponent(collection)}` }, "Enrol photos into " + collection)) : null,
    grid, pager);
  await show(0, early);
  return view;
}

function persons(collection, cursor, signal) {
  return get(`/v1/collections/${encodeURIComponent(collection)}/persons`, { limit: PAGE, cursor }, { signal });
}

function card(collection, p) {
  const slot = h("span", { class: "thumb-slot" }, placeholder(`no thumbnail of ${p.name || p.person_id}`));
  if (p.firstFace) thumbnail(slot, collection, p.firstFace, p.name || p.person_id);
  return h("li", { class: "person", "data-person": p.person_id },
    h("a", { href: `#/person/${encodeURIComponent(collection)}/${encodeURIComponent(p.person_id)}` },
      slot, h("strong", { class: "name" }, p.name || "(no name)"), h("code", {}, p.person_id),
      h("span", { class: "faces" }, `${p.faces} face${p.faces === 1 ? "" : "s"}`)));
}
