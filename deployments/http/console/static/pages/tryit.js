// Try it: a photo (a file, or a frame of the webcam) through detect, identify,
// verify or analyze; the answer drawn on the photo, the raw JSON beside it, and
// the same request as a curl command.

import { call, get } from "../api.js";
import { busy, copyButton, field, h, s, showError } from "../ui.js";

const MODES = { detect: "Detect faces", identify: "Identify (1:N)", verify: "Verify two photos (1:1)", analyze: "Analyze age, gender, emotion" };

export async function render({ query, signal }) {
  const { collections } = await get("/v1/collections", null, { signal }).catch(() => ({ collections: [] }));
  const mode = h("select", { name: "mode" }, Object.entries(MODES).map(([v, t]) => h("option", { value: v, selected: v === (query.get("mode") || "detect") }, t)));
  const collection = h("select", { name: "collection" }, collections.map((c) => h("option", { value: c.collection }, c.collection)));
  const photos = [photoInput("Photo", "img"), photoInput("Second photo", "img2")];
  const out = h("div", { class: "result", "aria-live": "polite" });
  const run = h("button", { type: "submit", class: "primary" }, "Run");
  const collField = field("Collection", collection);
  const sync = () => {
    collField.hidden = mode.value !== "identify";
    photos[1].el.hidden = mode.value !== "verify";
  };
  mode.addEventListener("change", sync);
  sync();
  const form = h("form", { class: "card", onsubmit: (e) => {
    e.preventDefault();
    const chosen = mode.value === "verify" ? photos : [photos[0]];
    const missing = chosen.find((p) => !p.blob);
    if (missing) { showError(new Error(`Choose or capture the ${missing.label.toLowerCase()} first.`), out); return; }
    if (mode.value === "identify" && !collection.value) { showError(new Error("There is no collection to identify against: enrol someone first."), out); return; }
    busy(run, request(mode.value, collection.value, chosen, out));
  } }, h("div", { class: "row" }, field("What to run", mode), collField), h("div", { class: "row photos" }, photos.map((p) => p.el)), run);
  return h("section", {}, h("h1", {}, "Try it"), form, out);
}

function photoInput(label, name) {
  const st = { label, blob: null, fileName: null, url: null };
  const file = h("input", { type: "file", accept: "image/*", name, onchange: () => {
    if (file.files[0]) set(file.files[0], file.files[0].name);
  } });
  const preview = h("div", { class: "preview" });
  const camBox = h("div", { class: "camera" });
  function set(blob, fileName) {
    st.blob = blob; st.fileName = fileName;
    if (st.url) URL.revokeObjectURL(st.url);
    st.url = URL.createObjectURL(blob);
    preview.replaceChildren(h("img", { src: st.url, alt: `${label}: ${fileName}` }));
  }
  const cam = h("button", { type: "button", onclick: () => webcam(camBox, (blob) => set(blob, "webcam.jpg")) }, "Use the webcam…");
  st.el = h("fieldset", { class: "photo" }, h("legend", {}, label), field("Photo file", file), cam, camBox, preview);
  return st;
}

async function webcam(box, done) {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (err) {
    showError(new Error(`The webcam could not be opened: ${err.message}`), box);
    return;
  }
  const video = h("video", { autoplay: true, playsInline: true, muted: true, "aria-label": "Webcam preview" });
  video.srcObject = stream;
  const stop = () => { stream.getTracks().forEach((t) => t.stop()); box.replaceChildren(); };
  // enabled once the camera has sent a frame: a capture before that would be empty
  const snap = h("button", { type: "button", class: "primary", disabled: true, onclick: () => {
    const c = h("canvas", { width: video.videoWidth, height: video.videoHeight });
    c.getContext("2d").drawImage(video, 0, 0);
    c.toBlob((blob) => {
      stop();
      if (blob) done(blob); else showError(new Error("The webcam gave no picture: try again."), box);
    }, "image/jpeg", 0.92);
  } }, "Capture");
  video.addEventListener("playing", () => { snap.disabled = false; snap.focus(); }, { once: true });
  box.replaceChildren(video, h("div", { class: "row" }, snap, h("button", { type: "button", onclick: stop }, "Cancel")));
}

function endpoint(mode, collection) {
  if (mode === "identify") return `/v1/collections/${encodeURIComponent(collection)}/identify`;
  return `/v1/${mode}`;
}

async function request(mode, collection, photos, out) {
  const path = endpoint(mode, collection);
  const names = mode === "verify" ? ["img1", "img2"] : ["img"];
  const form = new FormData();
  photos.forEach((p, i) => form.append(names[i], p.blob, p.fileName));
  const curl = `curl -s -X POST '${location.origin}${path}'` + (document.querySelector("[data-testid=key-id]") ? ` -H "Authorization: Bearer $FACEFLEET_API_KEY"` : "") +
    photos.map((p, i) => ` -F ${names[i]}=@${shellQuote(p.fileName)}`).join("");
  out.replaceChildren(h("p", { class: "muted" }, "Running…"));
  let answer;
  try {
    answer = await call("POST", path, { form });
  } catch (err) {
    out.replaceChildren(curlBlock(curl));
    showError(err, out);
    return;
  }
  const drawn = photos.map((p, i) => drawing(p, overlays(mode, answer, i)));
  out.replaceChildren(
    h("div", { class: "answer" },
      h("div", { class: "drawn" }, verdict(mode, answer), drawn),
      h("div", { class: "json" }, h("h2", {}, "JSON"), h("pre", { tabindex: "0", "data-testid": "raw-json" }, JSON.stringify(answer, null, 2)), curlBlock(curl))));
}

function shellQuote(name) { return /^[\w.@-]+$/.test(name) ? name : `'${name.replace(/'/g, "'\\''")}'`; }

function curlBlock(curl) {
  return h("div", { class: "curl" }, h("h2", {}, "The same request"), h("pre", { tabindex: "0", "data-testid": "curl" }, curl), copyButton(() => curl, "Copy curl"));
}

function verdict(mode, a) {
  if (mode === "verify") {
    return h("p", { class: a.verified ? "verdict ok" : "verdict bad", "data-testid": "verdict" },
      a.verified ? "Same person" : "Not the same person", ` — distance ${a.distance === null ? "n/a" : a.distance.toFixed(3)} (threshold ${a.threshold})`);
  }
  const n = (a.faces || []).length;
  return h("p", { class: "verdict", "data-testid": "verdict" }, `${n} face${n === 1 ? "" : "s"} found`);
}

// [{box, lines, match}] per face of photo i
function overlays(mode, a, i) {
  if (mode === "verify") {
    const box = a.faces && a.faces[i === 0 ? "img1" : "img2"];
    return box ? [{ box, lines: [a.verified ? "match" : "no match"], match: a.verified }] : [];
  }
  return (a.faces || []).filter((f) => f.box).map((f) => {
    if (mode === "identify") {
      const m = f.matches && f.matches[0];
      if (!m || !m.match) return { box: f.box, lines: ["unknown", m ? `nearest ${m.name || m.person_id} d=${m.distance.toFixed(3)}` : "no match"], match: false };
      return { box: f.box, lines: [m.name || m.person_id, `d=${m.distance.toFixed(3)}`], match: true };
    }
    if (mode === "analyze") {
      return { box: f.box, lines: [`age ${f.age ?? "?"}`, f.dominant_gender || "", f.dominant_emotion || ""].filter(Boolean), match: null };
    }
    return { box: f.box, lines: [`${(f.confidence * 100).toFixed(0)}%`], match: null };
  });
}

// the photo with an SVG drawn over it in the photo's own pixels
function drawing(photo, faces) {
  const img = h("img", { src: photo.url, alt: photo.fileName });
  const svg = s("svg", { class: "overlay", "aria-label": "faces found", role: "img" });
  const wrap = h("figure", { class: "drawing" }, img, svg);
  img.addEventListener("load", () => {
    const W = img.naturalWidth, H = img.naturalHeight, fs = Math.max(12, Math.round(W / 28));
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    for (const f of faces) {
      const cls = f.match === true ? "match" : f.match === false ? "nomatch" : "plain";
      const { x, y, w, h: bh } = f.box;
      svg.append(s("rect", { x, y, width: w, height: bh, class: "box " + cls }));
      f.lines.forEach((line, k) => {
        const ty = y + bh + fs * (k + 1.1) > H ? y - fs * (f.lines.length - k - 0.2) : y + bh + fs * (k + 1.1);
        svg.append(s("text", { x, y: ty, "font-size": fs, class: "label " + cls }, line));
      });
    }
  });
  return wrap;
}
