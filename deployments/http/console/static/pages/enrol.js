// Enrol by drag and drop: photos of one person, or a folder with one subfolder
// per person (the CLI's layout: people/alice/1.jpg). Each file is one
// POST .../faces with an Idempotency-Key made from the collection, the person
// and the file's bytes, so a retried or repeated upload is not enrolled twice;
// at most CONCURRENCY uploads run at once.

import { ApiError, get, upload } from "../api.js";
import { busy, field, h, showError } from "../ui.js";

const CONCURRENCY = 3;
const RETRIES = 2;
const IMAGE = /\.(jpe?g|png|webp|bmp|gif|tiff?|pgm|ppm)$/i;
const PERSON_BAD = /[^A-Za-z0-9_.:@-]+/g;

// the person id the CLI gives a folder (facefleet/enroll.py person_id_for)
export function personIdFor(folder) {
  const pid = folder.replace(PERSON_BAD, "-").replace(/^[_.:@-]+/, "").slice(0, 128).replace(/-+$/, "");
  return pid || null;
}

export async function render({ query, signal }) {
  const { collections } = await get("/v1/collections", null, { signal });
  const collection = h("input", { name: "collection", required: true, list: "enrol-collections",
    value: query.get("collection") || (collections[0] && collections[0].collection) || "" });
  const list = h("datalist", { id: "enrol-collections" }, collections.map((c) => h("option", { value: c.collection })));
  const personId = h("input", { name: "person_id", autocomplete: "off", maxlength: 128 });
  const name = h("input", { name: "name", autocomplete: "off", maxlength: 256 });
  const files = h("input", { type: "file", multiple: true, accept: "image/*", class: "offscreen", onchange: () => take([...files.files]) });
  const folder = h("input", { type: "file", webkitdirectory: true, multiple: true, class: "offscreen", onchange: () => take([...folder.files]) });
  const rows = h("tbody");
  const summary = h("p", { class: "summary", "aria-live": "polite", "data-testid": "enrol-summary" });
  const zone = h("div", { class: "dropzone", tabindex: "0", role: "group", "aria-label": "Drop photos or a folder here",
    ondragover: (e) => { e.preventDefault(); zone.classList.add("over"); },
    ondragleave: () => zone.classList.remove("over"),
    // from the keyboard, the zone opens the photo chooser
    onkeydown: (e) => { if (e.target === zone && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); files.click(); } },
    ondrop: async (e) => { e.preventDefault(); zone.classList.remove("over"); take(await dropped(e.dataTransfer)); } },
  h("p", {}, h("strong", {}, "Drop photos of one person, or a folder with one subfolder per person.")),
  h("div", { class: "row" },
    h("button", { type: "button", onclick: () => files.click() }, "Choose photos…"),
    h("button", { type: "button", onclick: () => folder.click() }, "Choose a folder…")),
  files, folder);
  const retry = h("button", { type: "button", disabled: true }, "Retry failed uploads");
  let items = [];

  function take(list) {
    if (!list.length) return;
    const coll = collection.value.trim();
    if (!coll) { showError(new Error("Name the collection to enrol into first."), summary.parentElement); collection.focus(); return; }
    // a dropped tree people/alice/1.jpg: a photo directly in people/ belongs to no person
    const depth = Math.max(...list.map((f) => (f.webkitRelativePath || f.name).split("/").length));
    const batch = list.map((file) => plan(file, coll, personId.value.trim(), name.value.trim(), depth));
    if (batch.some((it) => !it.personId && !it.error)) {
      showError(new Error("Photos outside a person folder need a person id: fill in Person id, or drop a folder with one subfolder per person."), summary.parentElement);
      personId.focus();
      return;
    }
    items = items.concat(batch);
    rows.append(...batch.map((it) => it.row));
    run(batch);
  }

  async function run(batch) {
    retry.disabled = true;
    const queue = batch.filter((it) => !it.error && it.state !== "done");
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      while (queue.length) await send(queue.shift());
    }));
    report();
  }

  function report() {
    const done = items.filter((it) => it.state === "done");
    const failed = items.filter((it) => it.state === "failed");
    const persons = new Set(done.map((it) => it.personId));
    const replayed = done.filter((it) => it.replayed).length;
    summary.textContent = `${done.length} of ${items.length} photo(s) enrolled for ${persons.size} person(s)` +
      (replayed ? ` (${replayed} already enrolled earlier: not enrolled twice)` : "") +
      (failed.length ? `; ${failed.length} failed (see each file).` : ".");
    retry.disabled = !failed.length;
  }

  retry.addEventListener("click", () => busy(retry, run(items.filter((it) => it.state === "failed"))));
  return h("section", {}, h("h1", {}, "Enrol"),
    h("div", { class: "row" }, field("Collection", collection, "an existing one, or a new name (admin keys create it)"), list,
      field("Person id", personId, "for photos of one person (a folder's subfolders name their persons)"), field("Name", name, "its display name (a folder's name otherwise)")),
    zone, summary,
    h("table", { class: "uploads" }, h("caption", {}, "Uploads"),
      h("thead", {}, h("tr", {}, ["File", "Person", "Progress", "Result"].map((x) => h("th", { scope: "col" }, x)))), rows),
    retry);
}

// the files of a drop: folders are walked (a dropped folder's own name is not a person)
async function dropped(dt) {
  const entries = [...dt.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  if (!entries.some((e) => e.isDirectory)) return [...dt.files];
  const out = [];
  async function walk(entry, path) {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      Object.defineProperty(file, "webkitRelativePath", { value: path + file.name });
      out.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {  // readEntries answers in chunks until an empty one
        const chunk = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!chunk.length) break;
        for (const child of chunk) await walk(child, path + entry.name + "/");
      }
    }
  }
  for (const e of entries) await walk(e, "");
  return out;
}

function plan(file, collection, fallbackId, fallbackName, depth) {
  // a/b/photo.jpg: the person is the photo's own folder (b); a photo with no folder
  // is the one person named in the form
  const parts = (file.webkitRelativePath || file.name).split("/");
  const loose = depth >= 3 && parts.length < 3;
  const folder = parts.length >= 2 && !loose ? parts[parts.length - 2] : null;
  const it = { file, collection, rel: parts.join("/"), state: "queued", tries: 0,
    personId: folder ? personIdFor(folder) : loose ? null : fallbackId, name: folder || fallbackName || null };
  it.progress = h("progress", { max: 1, value: 0, "aria-label": `upload of ${it.rel}` });
  it.result = h("td", { class: "result" }, "queued");
  it.row = h("tr", { "data-file": it.rel }, h("td", {}, it.rel), h("td", {}, it.personId || "—"), h("td", {}, it.progress), it.result);
  if (loose) {
    fail(it, new ApiError(0, "not_in_person_folder", "directly in the dropped folder, in no person's subfolder (not uploaded)"));
    it.error = true;
  } else if (!IMAGE.test(file.name) && !(file.type || "").startsWith("image/")) {
    fail(it, new ApiError(0, "not_an_image", "not an image file (checked here, not uploaded)"));
    it.error = true;
  }
  return it;
}

function fail(it, err) {
  it.state = "failed";
  it.row.classList.add("failed");
  it.result.replaceChildren(h("span", { class: "error-text" }, `${err.message} [${err.code || "error"}]`));
}

async function idempotencyKey(it) {
  if (it.key) return it.key;
  if (crypto.subtle) {
    const head = new TextEncoder().encode(`${it.collection}\0${it.personId}\0`);
    const body = new Uint8Array(await it.file.arrayBuffer());
    const all = new Uint8Array(head.length + body.length);
    all.set(head); all.set(body, head.length);
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
    it.key = "console-" + [...digest.slice(0, 20)].map((b) => b.toString(16).padStart(2, "0")).join("");
  } else {  // plain http to another host: no SubtleCrypto; the key still holds for retries
    it.key = "console-" + Date.now().toString(16) + Math.random().toString(16).slice(2);
  }
  return it.key;
}

async function send(it) {
  it.state = "uploading";
  it.row.classList.remove("failed");
  it.result.textContent = "uploading";
  const form = new FormData();
  form.append("img", it.file, it.file.name);
  form.append("person_id", it.personId);
  if (it.name) form.append("name", it.name);
  const path = `/v1/collections/${encodeURIComponent(it.collection)}/faces`;
  for (;;) {
    try {
      const { body } = await upload(path, form, { headers: { "Idempotency-Key": await idempotencyKey(it) },
        onProgress: (f) => (it.progress.value = f) });
      it.state = "done";
      it.replayed = body.replayed;
      it.progress.value = 1;
      it.result.replaceChildren(h("span", { class: "ok" }, body.replayed ? "already enrolled" : "enrolled"), " ",
        h("code", { class: "small" }, body.face_id.slice(0, 12)));
      return;
    } catch (err) {
      // the same key again: a face the first try enrolled is given back, not enrolled twice
      const transient = err.status === 0 || err.status === 503 || err.status === 429;
      if (transient && it.tries++ < RETRIES) { await new Promise((r) => setTimeout(r, 1000 * it.tries)); continue; }
      fail(it, err);
      return;
    }
  }
}
