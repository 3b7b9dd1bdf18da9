// Small DOM helpers shared by the pages: element building, errors in words,
// confirmations, copy buttons.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const SVG_NS = "http://www.w3.org/2000/svg";
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children.flat(Infinity)) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// an error said in words, with its code; every failure goes through here or an inline slot
export function showError(err, where) {
  if (err && err.name === "AbortError") return;
  const text = describe(err);
  const box = h("div", { class: "error", role: "alert" }, text,
    h("button", { class: "link", "aria-label": "Dismiss this error", onclick: (e) => e.target.parentElement.remove() }, "×"));
  (where || document.getElementById("errors")).append(box);
  return box;
}

export function describe(err) {
  if (!err) return "unknown error";
  if (err.code) return `${err.message} [${err.code}]${err.requestId ? " — request " + err.requestId : ""}`;
  return String(err.message || err);
}

export function clearErrors() { document.getElementById("errors").replaceChildren(); }

// a modal confirmation naming what will be lost; resolves true / false
export function confirmDialog(title, message, action = "Delete") {
  return new Promise((resolve) => {
    const dlg = h("dialog", { class: "confirm", "aria-labelledby": "dlg-title" },
      h("h2", { id: "dlg-title" }, title), h("p", {}, message),
      h("div", { class: "row" },
        h("button", { class: "danger", value: "yes", onclick: () => dlg.close("yes") }, action),
        h("button", { value: "no", onclick: () => dlg.close("no") }, "Cancel")));
    dlg.addEventListener("close", () => { dlg.remove(); resolve(dlg.returnValue === "yes"); });
    document.body.append(dlg);
    dlg.showModal();
    dlg.querySelector("button[value=no]").focus();
  });
}

export function copyButton(getText, label = "Copy") {
  const b = h("button", { type: "button", class: "copy", onclick: async () => {
    const text = getText();
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // no clipboard permission (plain http): select a hidden textarea and copy
      const t = h("textarea", { class: "offscreen" }); t.value = text; document.body.append(t);
      t.select(); document.execCommand("copy"); t.remove();
    }
    b.textContent = "Copied"; setTimeout(() => (b.textContent = label), 1500);
  } }, label);
  return b;
}

export function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "—";
}

export function field(label, input, hint) {
  const id = input.id || "f-" + Math.random().toString(36).slice(2, 9);
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("small", {}, hint) : null);
}

export function busy(button, promise) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  return promise.finally(() => { button.disabled = false; button.removeAttribute("aria-busy"); });
}

// the placeholder shown where a face thumbnail will be
export function placeholder(label) {
  const svg = s("svg", { viewBox: "0 0 64 64", class: "thumb placeholder", role: "img", "aria-label": label || "no thumbnail" },
    s("rect", { width: 64, height: 64, fill: "#e4e8ef" }),
    s("circle", { cx: 32, cy: 25, r: 11, fill: "#b7c0ce" }),
    s("path", { d: "M12 60c3-12 11-17 20-17s17 5 20 17z", fill: "#b7c0ce" }));
  return svg;
}

export function table(headers, rows, caption) {
  return h("table", {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows));
}
