// People of a collection: a grid paged by cursor (one page of the API at a time,
// never the whole collection), with search by part of a name or person id done by
// the API (`q`) over the whole collection; the matches page by cursor as the grid
// does. The search is kept in the address (#/people/NAME?q=...), so it can be shared.

import { get } from "../api.js";
import { can } from "../app.js";
import { thumbnail } from "../thumbs.js";
import { field, h, placeholder, showError } from "../ui.js";

const PAGE = 60;
const MAX_Q = 200;  // the API's limit on q (after stripping)

// started while the key is checked (app.js): the list and the first page at once
export function prefetch(args) {
  if (!args[0]) return null;
  const out = { collections: get("/v1/collections"), page: persons(args[0], null, "") };
  for (const p of Object.values(out)) p.catch(() => {});  // awaited by render, or dropped
  return out;
}

export async function render({ args, query, signal, prefetched }) {
  // a collection named in the address: its first page is asked for with the list
  const pre = prefetched || prefetch(args) || {};
  const { collections } = await (pre.collections || get("/v1/collections", null, { signal }));
  const collection = args[0] || (collections[0] && collections[0].collection);
  const view = h("section", {}, h("h1", {}, "People"));
  if (!collection) { view.append(h("p", { class: "muted" }, "No collection yet.")); return view; }
  const pick = h("select", { onchange: () => (location.hash = `#/people/${encodeURIComponent(pick.value)}`) },
    collections.map((c) => h("option", { value: c.collection, selected: c.collection === collection }, c.collection)));
  let term = (query.get("q") || "").trim().slice(0, MAX_Q);
  const q = h("input", { type: "search", name: "q", value: term, maxlength: MAX_Q, placeholder: "name or person id" });
  const grid = h("ul", { class: "grid", "aria-label": `Persons of ${collection}`, "aria-busy": "true" });
  const status = h("p", { class: "muted", "aria-live": "polite" });
  const prev = h("button", { type: "button", disabled: true }, "← Previous");
  const next = h("button", { type: "button", disabled: true }, "Next →");
  const pager = h("nav", { class: "row pager", "aria-label": "Pages of persons" }, prev, status, next);
  // cursors[i]: the cursor of page i of the current search (a cursor is bound to its q)
  let cursors = [null], at = 0, shown = 0;

  async function show(i, ready) {
    const mine = ++shown;  // a later search or page wins over an answer still coming
    grid.setAttribute("aria-busy", "true");
    const page = await (ready || persons(collection, cursors[i], term, signal));
    if (mine !== shown) return;
    at = i;
    cursors[i + 1] = page.next_cursor;
    draw(page.persons);
    prev.disabled = i === 0;
    next.disabled = !page.next_cursor;
    status.textContent = `page ${i + 1} · ${page.persons.length} ${term ? "matching " : ""}persons`;
    grid.setAttribute("aria-busy", "false");
  }

  function draw(persons) {
    grid.replaceChildren(...persons.map((p) => card(collection, p)));
    if (!persons.length) grid.append(h("li", { class: "muted" }, term ? `No person's name or id contains “${term}”.` : "No person enrolled yet."));
  }

  function search(e) {
    e.preventDefault();
    term = q.value.trim();
    cursors = [null];
    // the address says what is shown; replaceState does not render the page again
    const hash = `#/people/${encodeURIComponent(collection)}` + (term ? `?q=${encodeURIComponent(term)}` : "");
    history.replaceState(null, "", hash);
    show(0).catch(showError);
  }

  prev.addEventListener("click", () => show(at - 1).catch(showError));
  next.addEventListener("click", () => show(at + 1).catch(showError));
  view.append(
    h("form", { class: "row", role: "search", onsubmit: search },
      field("Collection", pick), field("Search", q, "part of a name or person id, in the whole collection"),
      h("button", { type: "submit" }, "Search")),
    can("write") ? h("p", {}, h("a", { href: `#/enrol?collection=${encodeURIComponent(collection)}` }, "Enrol photos into " + collection)) : null,
    grid, pager);
  // the prefetched first page is the unfiltered one: a search in the address asks anew
  await show(0, term ? null : pre.page);
  return view;
}

function persons(collection, cursor, q, signal) {
  return get(`/v1/collections/${encodeURIComponent(collection)}/persons`, { limit: PAGE, cursor, q }, { signal });
}

function card(collection, p) {
  const slot = h("span", { class: "thumb-slot" }, placeholder(`no thumbnail of ${p.name || p.person_id}`));
  if (p.firstFace) thumbnail(slot, collection, p.firstFace, p.name || p.person_id);
  return h("li", { class: "person", "data-person": p.person_id },
    h("a", { href: `#/person/${encodeURIComponent(collection)}/${encodeURIComponent(p.person_id)}` },
      slot, h("strong", { class: "name" }, p.name || "(no name)"), h("code", {}, p.person_id),
      h("span", { class: "faces" }, `${p.faces} face${p.faces === 1 ? "" : "s"}`)));
}
