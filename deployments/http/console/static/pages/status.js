// Status: readiness per deployment (/ready), replicas and request rate and latency
// by route (/metrics), batch sizes (/v1/stats); refreshed every few seconds while
// the page is shown, with charts where a glance says more than a table.

import { authHeaders, get } from "../api.js";
import { h, s, showError, table } from "../ui.js";

const EVERY_MS = 5000;

export async function render({ signal }) {
  const ready = h("div", { "aria-live": "polite" });
  const traffic = h("div");
  const batches = h("div");
  const view = h("section", {}, h("h1", {}, "Status"),
    h("p", {}, h("a", { href: "/docs", target: "_blank", rel: "noopener" }, "API documentation (/docs)"), " · ",
      h("a", { href: `${location.protocol}//${location.hostname}:8265`, target: "_blank", rel: "noopener" }, "Ray dashboard"),
      h("span", { class: "muted" }, " (port 8265, when the service runs with --dashboard)")),
    h("h2", {}, "Deployments"), ready, h("h2", {}, "Requests by route"), traffic, h("h2", {}, "Batch sizes"), batches);
  let previous = null;

  async function tick() {
    const [r, metrics, stats] = await Promise.allSettled([readiness(signal), fetchMetrics(signal), get("/v1/stats", null, { signal })]);
    if (signal.aborted) return;
    const replicas = metrics.status === "fulfilled" ? replicasOf(metrics.value) : {};
    if (r.status === "fulfilled") ready.replaceChildren(readyTable(r.value, replicas)); else showError(r.reason, ready);
    if (metrics.status === "fulfilled") {
      const now = { t: performance.now(), routes: routesOf(metrics.value) };
      traffic.replaceChildren(trafficView(now, previous));
      previous = now;
    } else traffic.replaceChildren(h("p", { class: "error" }, `Request metrics unavailable: ${metrics.reason.message} [${metrics.reason.code || "error"}]`));
    if (stats.status === "fulfilled") batches.replaceChildren(batchView(stats.value.batch_sizes)); else showError(stats.reason, batches);
  }

  await tick();
  const timer = setInterval(() => tick().catch(showError), EVERY_MS);
  signal.addEventListener("abort", () => clearInterval(timer));
  return view;
}

async function readiness(signal) {
  // 503 while not ready, with the same body: read it either way
  const res = await fetch("/ready", { signal });
  return res.json();
}

async function fetchMetrics(signal) {
  const res = await fetch("/metrics", { headers: authHeaders(), signal });
  if (!res.ok) {
    let e = null; try { e = (await res.json()).error; } catch { /* plain */ }
    const err = new Error(e ? e.message : `HTTP ${res.status}`); err.code = e && e.code; throw err;
  }
  return parseProm(await res.text());
}

// Prometheus text: [{name, labels, value}]
export function parseProm(text) {
  const out = [];
  const re = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/;
  const lre = /(\w+)="((?:[^"\\]|\\.)*)"/g;
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = re.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(lre)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

function replicasOf(samples) {
  const by = {};
  for (const x of samples) {
    const d = x.labels.deployment, r = x.labels.replica;
    if (d && r) (by[d] = by[d] || new Set()).add(r);
  }
  return Object.fromEntries(Object.entries(by).map(([d, set]) => [d, set.size]));
}

function routesOf(samples) {
  const routes = {};
  const key = (l) => `${l.method || ""} ${l.route || "?"}`;
  for (const x of samples) {
    if (x.name === "facefleet_http_requests_total") {
      const r = (routes[key(x.labels)] = routes[key(x.labels)] || { count: 0, sum: 0, n: 0, errors: 0 });
      r.count += x.value;
      if (/^5/.test(x.labels.status || "")) r.errors += x.value;
    } else if (x.name === "facefleet_http_request_duration_seconds_sum" || x.name === "facefleet_http_request_duration_seconds_count") {
      const r = (routes[key(x.labels)] = routes[key(x.labels)] || { count: 0, sum: 0, n: 0, errors: 0 });
      if (x.name.endsWith("_sum")) r.sum += x.value; else r.n += x.value;
    }
  }
  return routes;
}

function readyTable(r, replicas) {
  const rows = Object.entries(r.deployments || {}).map(([name, ok]) => h("tr", { "data-deployment": name },
    h("th", { scope: "row" }, name), h("td", {}, h("span", { class: ok ? "badge ok" : "badge bad" }, ok ? "ready" : "not ready")),
    h("td", { class: "num" }, replicas[name] ?? "—")));
  return h("div", {}, h("p", { class: r.ready ? "verdict ok" : "verdict bad", "data-testid": "ready" },
    r.ready ? "All deployments ready" : "Not ready"), table(["Deployment", "Readiness", "Replicas reporting"], rows));
}

function trafficView(now, prev) {
  const dt = prev ? (now.t - prev.t) / 1000 : 0;
  const rows = Object.entries(now.routes).filter(([, r]) => r.count > 0).sort((a, b) => b[1].count - a[1].count).map(([route, r]) => {
    const p = prev && prev.routes[route];
    const rate = p && dt > 0 ? (r.count - p.count) / dt : null;
    const recent = p && r.n > p.n ? ((r.sum - p.sum) / (r.n - p.n)) * 1000 : null;
    return { route, total: r.count, errors: r.errors, rate, mean: r.n ? (r.sum / r.n) * 1000 : null, recent };
  });
  if (!rows.length) return h("p", { class: "muted" }, "No request counted yet.");
  const fmt = (x, d = 1) => (x === null ? "…" : x.toFixed(d));
  return h("div", { class: "charts" },
    bars("Mean latency (ms) by route, since start", rows.slice(0, 12).map((r) => [short(r.route), r.mean || 0])),
    table(["Route", "Requests", "5xx", "Rate now (req/s)", "Mean latency (ms)", "Latency now (ms)"],
      rows.map((r) => h("tr", {}, h("th", { scope: "row" }, h("code", {}, r.route)), h("td", { class: "num" }, r.total),
        h("td", { class: "num" }, r.errors), h("td", { class: "num" }, fmt(r.rate, 2)), h("td", { class: "num" }, fmt(r.mean)), h("td", { class: "num" }, fmt(r.recent))))));
}

// a route short enough for a chart's axis
function short(route) {
  return route.replace("/v1/collections/{collection}", "…/{c}").replace("{person_id}", "{p}").replace("{face_id}", "{f}");
}

function batchView(sizes) {
  const charts = [];
  for (const [dep, methods] of Object.entries(sizes || {})) {
    for (const [method, hist] of Object.entries(methods)) {
      const data = Object.entries(hist).sort((a, b) => Number(a[0]) - Number(b[0])).map(([size, n]) => [`${size}`, n]);
      if (data.length) charts.push(bars(`${dep}.${method}: batches by size`, data));
    }
  }
  return charts.length ? h("div", { class: "charts" }, charts) : h("p", { class: "muted" }, "No batch yet.");
}

// a horizontal bar chart; the numbers are in the bars' labels too (screen readers)
function bars(title, data) {
  const max = Math.max(1, ...data.map((d) => d[1]));
  const rowH = 22, labelW = 210, W = 520;
  const svg = s("svg", { viewBox: `0 0 ${W} ${data.length * rowH + 4}`, class: "chart", role: "img", "aria-label": title });
  data.forEach(([label, v], i) => {
    const y = i * rowH + 2;
    svg.append(s("text", { x: labelW - 6, y: y + 15, class: "axis", "text-anchor": "end" }, label.length > 30 ? label.slice(0, 29) + "…" : label),
      s("rect", { x: labelW, y: y + 3, height: rowH - 6, width: Math.max(1, ((W - labelW - 60) * v) / max), class: "bar" }),
      s("text", { x: labelW + ((W - labelW - 60) * v) / max + 4, y: y + 15, class: "value" }, Number.isInteger(v) ? v : v.toFixed(1)));
  });
  return h("figure", { class: "chart-box" }, h("figcaption", {}, title), svg);
}
