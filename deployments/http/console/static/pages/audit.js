// The audit trail (admin): filtered by collection, action and time, read a page
// at a time by cursor.

import { get } from "../api.js";
import { field, h, showError, when } from "../ui.js";

const ACTIONS = ["face.register", "face.forget", "face.import", "face.enrol_unknown", "person.forget", "person.update",
  "person.merge", "collection.create", "collection.update", "collection.drop", "key.create", "key.revoke", "identify",
  "face.read", "person.read", "persons.list", "faces.list", "export", "clusters", "auth.failure"];
const PAGE = 50;

export async function render({ query, signal }) {
  const collection = h("input", { name: "collection", value: query.get("collection") || "", autocomplete: "off" });
  const action = h("select", { name: "action" }, h("option", { value: "" }, "any action"),
    ACTIONS.map((a) => h("option", { value: a, selected: a === query.get("action") }, a)));
  const since = h("input", { type: "datetime-local", name: "since", value: query.get("since") || "" });
  const tbody = h("tbody");
  const more = h("button", { type: "button", hidden: true }, "Older entries…");
  const status = h("p", { class: "muted", "aria-live": "polite" });
  let cursor = null;

  async function load(first) {
    if (first) { tbody.replaceChildren(); cursor = null; }
    const q = { collection: collection.value.trim(), action: action.value, limit: PAGE, cursor };
    if (since.value) q.since = new Date(since.value).toISOString();
    const page = await get("/v1/audit", q, { signal });
    tbody.append(...page.entries.map(row));
    cursor = page.next_cursor;
    more.hidden = !cursor;
    status.textContent = `${tbody.children.length} entr${tbody.children.length === 1 ? "y" : "ies"} shown${cursor ? "" : " (all)"}`;
  }

  more.addEventListener("click", () => load(false).catch(showError));
  const view = h("section", {}, h("h1", {}, "Audit trail"),
    h("form", { class: "row card", role: "search", onsubmit: (e) => { e.preventDefault(); load(true).catch(showError); } },
      field("Collection", collection), field("Action", action), field("Since", since), h("button", { type: "submit" }, "Filter")),
    status,
    h("table", { class: "audit" }, h("caption", {}, "Entries, oldest first"),
      h("thead", {}, h("tr", {}, ["#", "When", "Action", "Collection", "What", "Key", "Status"].map((x) => h("th", { scope: "col" }, x)))), tbody),
    more);
  await load(true);
  return view;
}

function row(e) {
  const what = [e.person_id && `person ${e.person_id}`, e.target_key_id && `key ${e.target_key_id}`,
    e.face_ids && `${e.face_ids.length} face(s)`, e.rows !== undefined && e.rows !== null && `${e.rows} row(s)`,
    e.client && `client ${e.client}`].filter(Boolean).join(", ");
  return h("tr", { "data-action": e.action, "data-target": e.target_key_id || "" },
    h("td", { class: "num" }, e.seq), h("td", {}, when(e.at)), h("td", {}, h("code", {}, e.action)),
    h("td", {}, e.collection || "—"), h("td", {}, what || "—"), h("td", {}, e.key_id || "—"), h("td", {}, e.status));
}
