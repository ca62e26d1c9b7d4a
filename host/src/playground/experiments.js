// The experiments panel: per-variant results of an A/B test (GET /v1/experiments/{name}) as a
// table and a chart of each feedback's mean with its 95% interval. Hidden when the server has
// no experiments.

import { call } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "testid") e.dataset.testid = v;
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);
const num = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const interval = (i, f = num) => (i ? `[${f(i[0])}, ${f(i[1])}]` : "–");

/** One chart per feedback name: a row per variant, the mean as a dot, the interval as a bar. */
function chart(name, variants) {
  const rows = variants.filter((v) => v.feedback[name]);
  const values = rows.flatMap((v) => [v.feedback[name].mean, ...(v.feedback[name].interval || [])]);
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (name === "thumbs") [lo, hi] = [0, 1];
  if (hi - lo < 1e-9) [lo, hi] = [lo - 1, hi + 1];
  const width = 520;
  const left = 120;
  const rowH = 26;
  const height = rows.length * rowH + 24;
  const x = (v) => left + ((v - lo) / (hi - lo)) * (width - left - 16);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "data-testid": `experiment-chart-${name}` });
  root.append(svg("title", {}, `${name}: mean and 95% interval per variant`));
  rows.forEach((v, i) => {
    const m = v.feedback[name];
    const y = 14 + i * rowH;
    root.append(svg("text", { x: 4, y: y + 4, class: "chart-label" }, `${v.name} (n=${m.n})`));
    if (m.interval) {
      root.append(svg("line", { x1: x(m.interval[0]), x2: x(m.interval[1]), y1: y, y2: y, class: "chart-interval" }));
    }
    root.append(svg("circle", { cx: x(m.mean), cy: y, r: 4, class: "chart-mean" }));
    root.append(svg("text", { x: x(m.mean) + 7, y: y - 6, class: "chart-value" }, num(m.mean)));
  });
  const axisY = height - 8;
  root.append(svg("line", { x1: left, x2: width - 16, y1: axisY - 6, y2: axisY - 6, class: "chart-axis" }));
  root.append(svg("text", { x: left, y: axisY + 4, class: "chart-value" }, num(lo)));
  root.append(svg("text", { x: width - 40, y: axisY + 4, class: "chart-value" }, num(hi)));
  return el("figure", { class: "chart" }, el("figcaption", {}, `${name}: mean, 95% interval`), root);
}

function table(results) {
  const names = [...new Set(results.variants.flatMap((v) => Object.keys(v.feedback)))].sort();
  const head = el("tr", {}, el("th", {}, "variant"), el("th", {}, "requests"), el("th", {}, "users"),
    ...names.map((n) => el("th", {}, `${n} mean [95%]`)), ...names.map((n) => el("th", {}, `${n} lift`)),
    el("th", {}, "P(best)"), el("th", {}, "pairwise win rate"), el("th", {}, "latency p50"), el("th", {}, "tokens p50"));
  const rows = results.variants.map((v) =>
    el("tr", { testid: `experiment-variant-${v.name}` },
      el("td", {}, v.name + (v.name === results.baseline ? " (baseline)" : "")),
      el("td", {}, v.requests), el("td", {}, v.users),
      ...names.map((n) => el("td", {}, v.feedback[n] ? `${num(v.feedback[n].mean)} ${interval(v.feedback[n].interval)}` : "–")),
      ...names.map((n) => {
        const lift = v.feedback[n]?.lift;
        return el("td", {}, lift ? `${pct(lift.estimate)} ${interval(lift.interval, pct)}` : "–");
      }),
      el("td", {}, pct(v.prob_best)),
      el("td", {}, v.pairwise ? `${pct(v.pairwise.win_rate)} ${interval(v.pairwise.interval, pct)} of ${v.pairwise.comparisons}` : "–"),
      el("td", {}, v.latency_ms_p50 === null ? "–" : `${num(v.latency_ms_p50, 0)} ms`),
      el("td", {}, num(v.completion_tokens_p50, 0)),
    ),
  );
  return el("table", { class: "results" }, el("thead", {}, head), el("tbody", {}, rows));
}

async function show(name, box) {
  box.replaceChildren(el("p", { class: "hint" }, "loading…"));
  try {
    const { json } = await call("GET", `/v1/experiments/${encodeURIComponent(name)}`);
    const results = json.results;
    if (!results) {
      box.replaceChildren(el("p", { class: "problem" }, json.results_error || "no results"));
      return;
    }
    const names = [...new Set(results.variants.flatMap((v) => Object.keys(v.feedback)))].sort();
    box.replaceChildren(
      el("p", { class: `verdict ${results.verdict.status}`, testid: "experiment-verdict" }, results.verdict.message),
      table(results),
      ...names.map((n) => chart(n, results.variants)),
    );
  } catch (err) {
    box.replaceChildren(el("p", { class: "problem" }, err.message));
  }
}

/** Fills the experiments section, or hides it when there are none (or no such endpoint). */
export async function initExperiments() {
  const section = document.getElementById("experiments");
  const picker = document.getElementById("experiment-picker");
  const box = document.getElementById("experiment-results");
  let list = [];
  try {
    list = (await call("GET", "/v1/experiments")).json.data || [];
  } catch {
    list = [];
  }
  section.hidden = list.length === 0;
  if (!list.length) return;
  picker.replaceChildren(...list.map((e) => el("option", { value: e.name, title: e.description || "" }, e.name)));
  picker.onchange = () => show(picker.value, box);
  document.getElementById("experiment-refresh").onclick = () => show(picker.value, box);
  await show(picker.value, box);
}
