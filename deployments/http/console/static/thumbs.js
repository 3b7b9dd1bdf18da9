// Face thumbnails (GET .../faces/{id}/thumbnail), loaded as they scroll into view.
// Until the service has thumbnails (or with them off) the route answers 404: the
// placeholder stays, and after the first 404 no more are asked for in this tab.

import { imageUrl } from "./api.js";
import { h } from "./ui.js";

let off = false;
const observer = "IntersectionObserver" in window ? new IntersectionObserver(onSeen, { rootMargin: "200px" }) : null;

export function thumbnail(slot, collection, faceId, alt) {
  if (off || !faceId) return;
  slot.dataset.src = `/v1/collections/${encodeURIComponent(collection)}/faces/${encodeURIComponent(faceId)}/thumbnail`;
  slot.dataset.alt = alt;
  if (observer) observer.observe(slot); else load(slot);
}

function onSeen(entries) {
  for (const e of entries) if (e.isIntersecting) { observer.unobserve(e.target); load(e.target); }
}

async function load(slot) {
  if (off) return;
  const src = await imageUrl(slot.dataset.src).catch(() => null);
  if (!src) { off = true; return; }
  slot.replaceChildren(h("img", { src, alt: slot.dataset.alt, class: "thumb" }));
}
