// The playground: pick a pipeline, edit drafts of it side by side, run them on one input with
// streaming, see what each stage changed, compare two blind, save the best as a pipeline.
// Model and plugin output only ever enter the page as text (textContent, text nodes).

import { ApiError, apiKey, call, setApiKey, stream } from "./api.js";
import { renderDiff } from "./diff.js";
import { initExperiments } from "./experiments.js";
import { toYaml } from "./yaml.js";

const MAX_COLUMNS = 4;
const HISTORY_STORE = "pipehost.playground.history";
const HISTORY_LIMIT = 50;

// Every decoding parameter the pipeline format has, with the control that edits it.
const PARAMS = [
  { key: "temperature", kind: "range", min: 0, max: 2, step: 0.05 },
  { key: "top_p", kind: "range", min: 0.01, max: 1, step: 0.01 },
  { key: "top_k", kind: "int", min: 0, max: 1000 },
  { key: "min_p", kind: "range", min: 0, max: 1, step: 0.01 },
  { key: "repetition_penalty", kind: "range", min: 0.5, max: 2, step: 0.01 },
  { key: "presence_penalty", kind: "range", min: -2, max: 2, step: 0.1 },
  { key: "frequency_penalty", kind: "range", min: -2, max: 2, step: 0.1 },
  { key: "max_tokens", kind: "int", min: 1, max: 1048576 },
  { key: "seed", kind: "int", min: 0, max: Number.MAX_SAFE_INTEGER },
  { key: "stop", kind: "list" },
];

const TASK_LABELS = {
  "creative-writing": "Creative writing",
  companionship: "Emotional companionship",
  "open-question": "Open questions",
  "style-imitation": "Style imitation",
};

const $ = (id) => document.getElementById(id);

/** Builds an element: `el("div", {class: "x", testid: "y", onclick}, child, "text", ...)`. */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "testid") e.dataset.testid = v;
    else if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "value") e.value = v;
    else if (k === "checked") e.checked = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const clone = (v) => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const state = {
  library: [], // GET /v1/pipelines data
  base: null, // the picked pipeline: {name, info, spec, yaml}
  columns: [],
  nextId: 1,
  blind: null,
};

// ---------------------------------------------------------------------------------------------
// Drafts: a column's editable copy of the picked pipeline's file.

function newColumn(spec, label) {
  const draft = clone(spec);
  delete draft.name; // the name is given when saving
  const post = draft.post || [];
  delete draft.post;
  return {
    id: state.nextId++,
    label,
    draft,
    stages: post.map((s) => ({ enabled: true, spec: s, configText: JSON.stringify(s.config ?? {}, null, 2) })),
    problems: [],
    run: null,
    element: null,
  };
}

/** The column's draft as a pipeline spec (disabled stages left out). */
function draftSpec(col) {
  const spec = clone(col.draft);
  const post = col.stages.filter((s) => s.enabled).map((s) => clone(s.spec));
  if (post.length) spec.post = post;
  if (spec.params && !Object.keys(spec.params).length) delete spec.params;
  return spec;
}

function draftYaml(col) {
  return toYaml(draftSpec(col), `Draft from the playground, based on ${state.base.name}.`);
}

// ---------------------------------------------------------------------------------------------
// Library and picker.

async function loadLibrary(select) {
  const { json } = await call("GET", "/v1/pipelines");
  state.library = json.data;
  const picker = $("picker");
  picker.replaceChildren();
  const groups = new Map();
  for (const p of state.library) {
    const task = p.task || "other";
    if (!groups.has(task)) groups.set(task, []);
    groups.get(task).push(p);
  }
  for (const [task, list] of [...groups].sort()) {
    const group = el("optgroup", { label: TASK_LABELS[task] || task });
    for (const p of list) group.append(el("option", { value: p.name, title: p.description }, p.name));
    picker.append(group);
  }
  const errors = json.errors || [];
  $("load-errors").textContent = errors.length
    ? `Files that failed to load: ${errors.map((e) => `${e.file}:${e.line}:${e.column}: ${e.message}`).join("; ")}`
    : "";
  if (select && state.library.some((p) => p.name === select)) picker.value = select;
}

async function pick(name, { keepColumns = false } = {}) {
  const { json } = await call("GET", `/v1/pipelines/${encodeURIComponent(name)}`);
  state.base = { name, info: json, spec: json.spec, yaml: json.yaml };
  $("picker").value = name;
  $("pipeline-description").textContent = json.description || "";
  renderVars(json);
  if (!keepColumns || !state.columns.length) {
    state.columns = [newColumn(json.spec, "A")];
  }
  renderColumns();
  localStorage.setItem("pipehost.playground.pipeline", name);
}

function renderVars(info) {
  const box = $("vars");
  const old = readVars();
  box.replaceChildren();
  for (const v of info.variables) {
    const isInput = v.name === info.input_variable;
    const attrs = {
      id: `var-${v.name}`,
      testid: `var-${v.name}`,
      maxlength: v.max_chars ?? undefined,
      placeholder: v.default ?? "",
      value: old[v.name] ?? "",
    };
    const input = isInput ? el("textarea", { ...attrs, rows: 3 }) : el("input", { ...attrs, type: "text" });
    const limits = [v.required ? "required" : "optional", v.max_chars ? `≤ ${v.max_chars} characters` : null]
      .filter(Boolean)
      .join(", ");
    box.append(
      el(
        "label",
        { class: "var" },
        el("span", { class: "var-name" }, v.name),
        el("span", { class: "hint" }, `${v.description || ""} (${limits})`),
        input,
      ),
    );
  }
}

function readVars() {
  const vars = {};
  for (const input of $("vars").querySelectorAll("input, textarea")) {
    const name = input.id.replace(/^var-/, "");
    if (input.value !== "") vars[name] = input.value;
  }
  return vars;
}

// ---------------------------------------------------------------------------------------------
// Columns.

function renderColumns() {
  const box = $("columns");
  box.replaceChildren();
  state.columns.forEach((col, i) => {
    col.label = "ABCD"[i];
    col.element = renderColumn(col, i);
    box.append(col.element);
  });
  $("add-variant").disabled = state.columns.length >= MAX_COLUMNS;
}

/** Shown on a changed parameter: the pipeline's value, and a click puts it back. */
function changedBadge(changed, onReset, base) {
  const was = base === undefined ? "unset" : Array.isArray(base) ? base.join(" | ") : String(base);
  return changed
    ? el("button", { class: "badge", title: `changed; the pipeline has ${was}: click to restore it`, onclick: onReset, type: "button" }, `↺ ${was}`)
    : null;
}

function renderColumn(col, index) {
  const root = el("article", { class: "column", testid: `column-${index}` });
  const rerender = () => {
    const fresh = renderColumn(col, index);
    root.replaceWith(fresh);
    col.element = fresh;
  };
  const baseParams = state.base.spec.params || {};
  col.draft.params = col.draft.params || {};

  // Header and actions.
  root.append(
    el(
      "header",
      {},
      el("h2", {}, `Variant ${col.label}`),
      el("button", { testid: "run", onclick: () => runColumns([col]) }, "Run"),
      el("button", { testid: "duplicate", onclick: () => duplicate(col), disabled: state.columns.length >= MAX_COLUMNS }, "Duplicate"),
      el("button", { testid: "view-yaml", onclick: () => showYaml(col) }, "YAML"),
      el("button", { testid: "save", onclick: () => openSave(col) }, "Save as…"),
      state.columns.length > 1 ? el("button", { testid: "remove", onclick: () => removeColumn(col) }, "Remove") : null,
    ),
  );

  // The latest run first, so results stay in view while editing below.
  root.append(
    el("section", { class: "result" },
      el("div", { class: "output", testid: "output" }),
      el("div", { class: "metrics", testid: "metrics" }),
      el("details", { class: "stage-view", testid: "stage-view" }, el("summary", {}, "Stages")),
    ),
  );

  // Prompt builder.
  const prompt = col.draft.prompt;
  const basePrompt = state.base.spec.prompt || {};
  const cfg = (prompt.config = prompt.config || {});
  const baseCfg = basePrompt.config || {};
  const promptBox = el("fieldset", { class: "prompt" }, el("legend", {}, `Prompt: ${prompt.plugin}`));
  if (prompt.plugin === "persona") {
    for (const field of ["system", "role", "style"]) {
      if (cfg[field] === undefined && field === "system") continue;
      const area = el("textarea", {
        testid: `prompt-${field}`,
        rows: field === "style" ? 3 : 2,
        value: cfg[field] ?? "",
        oninput: (e) => {
          if (e.target.value) cfg[field] = e.target.value;
          else delete cfg[field];
          markChanged(label, !same(cfg[field], baseCfg[field]));
          scheduleCheck(col);
        },
      });
      const label = el("label", { class: "field" }, el("span", {}, field), area);
      markChanged(label, !same(cfg[field], baseCfg[field]));
      promptBox.append(label);
    }
    const list = el("ol", { class: "constraints", testid: "prompt-constraints" });
    const constraints = (cfg.constraints = cfg.constraints || []);
    constraints.forEach((c, i) => {
      list.append(
        el(
          "li",
          {},
          el("input", {
            type: "text",
            testid: `prompt-constraint-${i}`,
            value: c,
            oninput: (e) => {
              constraints[i] = e.target.value;
              scheduleCheck(col);
            },
          }),
          el("button", { type: "button", title: "remove this constraint", testid: `prompt-remove-constraint-${i}`, onclick: () => { constraints.splice(i, 1); rerender(); scheduleCheck(col); } }, "✕"),
        ),
      );
    });
    const constraintsLabel = el(
      "div",
      { class: "field" },
      el("span", {}, "constraints"),
      list,
      el("button", { type: "button", testid: "prompt-add-constraint", onclick: () => { constraints.push(""); rerender(); } }, "+ constraint"),
    );
    markChanged(constraintsLabel, !same(constraints, baseCfg.constraints || []));
    promptBox.append(constraintsLabel);
    const template = el("textarea", {
      testid: "prompt-template",
      rows: 2,
      value: cfg.template ?? "",
      oninput: (e) => {
        cfg.template = e.target.value;
        markChanged(templateLabel, !same(cfg.template, baseCfg.template));
        scheduleCheck(col);
      },
    });
    const templateLabel = el("label", { class: "field" }, el("span", {}, "template"), template);
    markChanged(templateLabel, !same(cfg.template, baseCfg.template));
    promptBox.append(templateLabel);
  } else {
    promptBox.append(jsonEditor(col, "prompt-config", cfg, (v) => { prompt.config = v; }));
  }
  promptBox.append(el("div", { class: "problem", testid: "prompt-error" }));
  root.append(promptBox);

  // Decoding parameters.
  const params = col.draft.params;
  const paramBox = el("fieldset", { class: "params" }, el("legend", {}, "Decoding"));
  for (const p of PARAMS) paramBox.append(paramControl(col, p, params, baseParams, rerender));
  paramBox.append(el("div", { class: "problem", testid: "params-error" }));
  root.append(paramBox);

  // Post-processors.
  const stagesBox = el("fieldset", { class: "stages" }, el("legend", {}, "Post-processors"));
  col.stages.forEach((s, i) => {
    const name = s.spec.name || s.spec.plugin;
    const editor = el("textarea", {
      testid: `stage-${i}-config`,
      rows: Math.min(6, s.configText.split("\n").length),
      value: s.configText,
      spellcheck: "false",
      oninput: (e) => {
        s.configText = e.target.value;
        try {
          s.spec.config = JSON.parse(s.configText || "{}");
          problem.textContent = "";
          scheduleCheck(col);
        } catch (err) {
          problem.textContent = `not JSON: ${err.message}`;
        }
      },
    });
    const problem = el("div", { class: "problem", testid: `stage-${i}-error` });
    stagesBox.append(
      el(
        "div",
        { class: "stage" + (s.enabled ? "" : " off") },
        el(
          "label",
          {},
          el("input", {
            type: "checkbox",
            testid: `stage-${i}-enabled`,
            checked: s.enabled,
            onchange: (e) => {
              s.enabled = e.target.checked;
              e.target.closest(".stage").classList.toggle("off", !s.enabled);
              scheduleCheck(col);
            },
          }),
          ` ${name}`,
          name !== s.spec.plugin ? el("span", { class: "hint" }, ` (${s.spec.plugin})`) : null,
          s.spec.on_error === "skip" ? el("span", { class: "hint" }, " on_error: skip") : null,
        ),
        editor,
        problem,
      ),
    );
  });
  if (!col.stages.length) stagesBox.append(el("p", { class: "hint" }, "No post-processors."));
  root.append(stagesBox);
  root.append(el("div", { class: "problem", testid: "error" }));

  if (col.run) showRun(col, root);
  showProblems(col, root);
  return root;
}

function markChanged(label, changed) {
  label.classList.toggle("changed", changed);
}

function paramControl(col, p, params, baseParams, rerender) {
  const base = baseParams[p.key];
  const value = params[p.key];
  const wrap = el("div", { class: "param", testid: `param-${p.key}-row` });
  const setValue = (v) => {
    if (v === undefined || v === "" || (Array.isArray(v) && !v.length)) delete params[p.key];
    else params[p.key] = v;
    const changed = !same(params[p.key], base);
    wrap.classList.toggle("changed", changed);
    badgeSlot.replaceChildren(...[changedBadge(changed, () => { setValue(clone(base)); rerender(); }, base)].filter(Boolean));
    scheduleCheck(col);
  };
  const badgeSlot = el("span", { class: "badge-slot" });
  const baseText = base === undefined ? "unset in the pipeline" : `the pipeline's value: ${Array.isArray(base) ? base.join(" | ") : base}`;
  const title = el("span", { class: "param-name", title: baseText }, p.key);
  if (p.kind === "list") {
    const area = el("textarea", {
      testid: `param-${p.key}`,
      rows: 1,
      placeholder: "one per line",
      value: (value || []).join("\n"),
      oninput: (e) => setValue(e.target.value.split("\n").filter((s) => s !== "")),
    });
    wrap.append(title, area, badgeSlot);
  } else {
    const number = el("input", {
      type: "number",
      testid: `param-${p.key}`,
      min: p.min,
      max: p.max,
      step: p.kind === "int" ? 1 : p.step,
      placeholder: "unset",
      value: value ?? "",
    });
    const parse = (s) => (s === "" ? undefined : p.kind === "int" ? parseInt(s, 10) : parseFloat(s));
    number.addEventListener("input", () => {
      const v = parse(number.value);
      if (slider && v !== undefined) slider.value = v;
      setValue(Number.isNaN(v) ? undefined : v);
    });
    let slider = null;
    if (p.kind === "range") {
      slider = el("input", {
        type: "range",
        testid: `param-${p.key}-slider`,
        min: p.min,
        max: p.max,
        step: p.step,
        value: value ?? base ?? p.min,
      });
      slider.addEventListener("input", () => {
        number.value = slider.value;
        setValue(parseFloat(slider.value));
      });
    }
    wrap.append(title, slider || el("span", {}), number, badgeSlot);
  }
  const changed = !same(value, base);
  wrap.classList.toggle("changed", changed);
  badgeSlot.append(...[changedBadge(changed, () => { if (base === undefined) delete params[p.key]; else params[p.key] = clone(base); rerender(); scheduleCheck(col); }, base)].filter(Boolean));
  return wrap;
}

function jsonEditor(col, testid, value, set) {
  const problem = el("div", { class: "problem" });
  const area = el("textarea", {
    testid,
    rows: 6,
    spellcheck: "false",
    value: JSON.stringify(value ?? {}, null, 2),
    oninput: (e) => {
      try {
        set(JSON.parse(e.target.value || "{}"));
        problem.textContent = "";
        scheduleCheck(col);
      } catch (err) {
        problem.textContent = `not JSON: ${err.message}`;
      }
    },
  });
  return el("div", {}, area, problem);
}

function duplicate(col) {
  if (state.columns.length >= MAX_COLUMNS) return;
  const copy = {
    ...col,
    id: state.nextId++,
    draft: clone(col.draft),
    stages: col.stages.map((s) => ({ ...s, spec: clone(s.spec) })),
    problems: [],
    run: null,
  };
  state.columns.splice(state.columns.indexOf(col) + 1, 0, copy);
  renderColumns();
}

function removeColumn(col) {
  state.columns = state.columns.filter((c) => c !== col);
  renderColumns();
}

// ---------------------------------------------------------------------------------------------
// Checking a draft as the server would load it: located problems shown beside their fields.

const checkTimers = new Map();

function scheduleCheck(col) {
  clearTimeout(checkTimers.get(col.id));
  checkTimers.set(col.id, setTimeout(() => checkDraft(col), 350));
}

async function checkDraft(col) {
  try {
    const { json } = await call("POST", "/v1/playground/check", { yaml: draftYaml(col) });
    col.problems = json.ok ? [] : json.errors;
  } catch (err) {
    col.problems = [{ line: 0, column: 0, message: err.message }];
  }
  showProblems(col, col.element);
}

/** Puts each located problem beside the field it names (`post[i]…`, `prompt…`, `params…`). */
function showProblems(col, root) {
  if (!root) return;
  const enabled = col.stages.map((s, i) => (s.enabled ? i : -1)).filter((i) => i >= 0);
  const slots = new Map();
  const put = (testid, text) => slots.set(testid, [...(slots.get(testid) || []), text]);
  col.stages.forEach((s, i) => slots.set(`stage-${i}-error`, []));
  for (const key of ["prompt-error", "params-error", "error"]) slots.set(key, []);
  for (const p of col.problems || []) {
    const where = p.line ? `line ${p.line}, column ${p.column}: ` : "";
    const text = where + p.message;
    const post = /^`post\[(\d+)\]/.exec(p.message);
    if (post) put(`stage-${enabled[Number(post[1])]}-error`, text);
    else if (p.message.startsWith("`prompt")) put("prompt-error", text);
    else if (p.message.startsWith("`params")) put("params-error", text);
    else put("error", text);
  }
  for (const [testid, texts] of slots) {
    const slot = root.querySelector(`[data-testid="${testid}"]`);
    if (slot && !(testid.startsWith("stage-") && texts.length === 0 && slot.textContent.startsWith("not JSON"))) {
      slot.textContent = texts.join("\n");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Running.

async function runColumns(columns) {
  const vars = readVars();
  let seed;
  if ($("same-seed").checked) {
    seed = columns.map((c) => c.draft.params?.seed).find((s) => s !== undefined) ?? Math.floor(Math.random() * 2 ** 31);
  }
  $("status").textContent = `running ${columns.length} variant${columns.length > 1 ? "s" : ""}…`;
  const started = Date.now();
  const results = await Promise.all(columns.map((c) => runColumn(c, vars, seed)));
  $("status").textContent = `done in ${((Date.now() - started) / 1000).toFixed(2)} s`;
  if (results.some(Boolean)) {
    addHistory({
      kind: "run",
      time: new Date().toISOString(),
      pipeline: state.base.name,
      vars,
      seed,
      columns: columns.filter((c) => c.run?.record).map(historyColumn),
    });
  }
}

function historyColumn(c) {
  return {
    label: c.label,
    id: c.run.record.id,
    draft: draftSpec(c),
    params: draftSpec(c).params || {},
    output: c.run.record.text,
    metrics: metricsText(c.run),
  };
}

async function runColumn(col, vars, seed) {
  const root = col.element;
  const output = root.querySelector('[data-testid="output"]');
  const errorBox = root.querySelector('[data-testid="error"]');
  output.textContent = "";
  errorBox.textContent = "";
  root.querySelector('[data-testid="metrics"]').textContent = "…";
  root.querySelector('[data-testid="stage-view"]').replaceChildren(el("summary", {}, "Stages"));
  root.classList.add("running");
  const run = { start: performance.now(), firstDelta: null, record: null, text: "" };
  col.run = run;
  const body = { yaml: draftYaml(col), vars, stream: true };
  if (seed !== undefined) body.params = { seed };
  try {
    await stream("/v1/playground/run", body, (event, data) => {
      if (event === "delta") {
        run.firstDelta ??= performance.now();
        run.text += data.text;
        output.append(document.createTextNode(data.text));
      } else if (event === "done") {
        run.record = data;
        run.end = performance.now();
      } else if (event === "error") {
        throw new ApiError(0, data.error);
      }
    });
    if (!run.record) throw new Error("the stream ended without a result");
    showRun(col, root);
    return true;
  } catch (err) {
    col.run = run.record ? run : null;
    const problems = err.body?.errors;
    if (problems) {
      col.problems = problems;
      showProblems(col, root);
    }
    errorBox.textContent = err.message;
    root.querySelector('[data-testid="metrics"]').textContent = "";
    return false;
  } finally {
    root.classList.remove("running");
  }
}

function metricsText(run) {
  const r = run.record;
  const genSecs = r.timings.generation_ms / 1000;
  const tps = genSecs > 0 ? r.usage.completion_tokens / genSecs : 0;
  return [
    `prompt ${r.usage.prompt_tokens} tok`,
    `completion ${r.usage.completion_tokens} tok`,
    `TTFT ${r.timings.ttft_ms.toFixed(0)} ms`,
    `${tps.toFixed(1)} tok/s`,
    `total ${(r.timings.total_ms / 1000).toFixed(2)} s`,
    `finish: ${r.finish_reason}`,
  ].join(" · ");
}

function showRun(col, root) {
  const run = col.run;
  if (!run?.record) return;
  const r = run.record;
  root.querySelector('[data-testid="output"]').textContent = r.text;
  root.querySelector('[data-testid="metrics"]').textContent = metricsText(run);
  const view = root.querySelector('[data-testid="stage-view"]');
  view.replaceChildren(el("summary", {}, `Stages (${r.stages.length - 1} post-processors)`));
  if (r.messages) {
    view.append(
      el("div", { class: "stage-step", testid: "stage-prompt" },
        el("h3", {}, `prompt · ${r.stages[0].plugin} · ${r.stages[0].ms.toFixed(2)} ms`),
        ...r.messages.map((m) => el("div", { class: "message" }, el("b", {}, m.role), el("pre", {}, m.content))),
      ),
    );
  }
  view.append(el("div", { class: "stage-step", testid: "stage-raw" }, el("h3", {}, "model (raw)"), el("pre", {}, r.raw_text ?? "")));
  let before = r.raw_text ?? "";
  for (const s of r.stages.slice(1)) {
    const after = s.output ?? before;
    const diffBox = el("pre", { class: "diff", testid: `stage-diff-${s.stage}` });
    renderDiff(diffBox, before, after);
    view.append(
      el("div", { class: "stage-step", testid: `stage-${s.stage}` },
        el("h3", {}, `${s.stage} · ${s.plugin} · ${s.ms.toFixed(2)} ms`, s.skipped_error ? el("span", { class: "problem" }, ` skipped: ${s.skipped_error}`) : null),
        diffBox,
      ),
    );
    before = after;
  }
}

// ---------------------------------------------------------------------------------------------
// Blind comparison of two variants' latest outputs.

function startBlind() {
  const done = state.columns.filter((c) => c.run?.record);
  const panel = $("blind-panel");
  if (done.length < 2) {
    $("status").textContent = "blind mode needs two variants that have run";
    return;
  }
  const pair = done.slice(0, 2);
  if (Math.random() < 0.5) pair.reverse();
  state.blind = { pair, vars: readVars() };
  $("blind-a").textContent = pair[0].run.record.text;
  $("blind-b").textContent = pair[1].run.record.text;
  $("blind-result").textContent = "";
  panel.hidden = false;
  for (const b of panel.querySelectorAll("button[data-choice]")) b.disabled = false;
}

async function chooseBlind(choice) {
  const blind = state.blind;
  if (!blind) return;
  const [a, b] = blind.pair;
  const ids = [a.run.record.id, b.run.record.id];
  const preferred = choice === "a" ? ids[0] : choice === "b" ? ids[1] : null;
  const reveal = `A was variant ${a.label}, B was variant ${b.label}; you chose ${choice === "tie" ? "a tie" : choice.toUpperCase()}.`;
  let recorded = "kept in this page's history";
  try {
    await call("POST", "/v1/feedback", { response_ids: ids, preferred });
    recorded = "recorded on the server and in this page's history";
  } catch (err) {
    if (err.status !== 404) recorded += ` (the server refused it: ${err.message})`;
  }
  $("blind-result").textContent = `${reveal} ${recorded}.`;
  for (const btn of $("blind-panel").querySelectorAll("button[data-choice]")) btn.disabled = true;
  addHistory({
    kind: "blind",
    time: new Date().toISOString(),
    pipeline: state.base.name,
    vars: blind.vars,
    choice,
    preferred: choice === "tie" ? null : (choice === "a" ? a : b).label,
    columns: [historyColumn(a), historyColumn(b)],
  });
  state.blind = null;
}

// ---------------------------------------------------------------------------------------------
// YAML view and saving.

function showYaml(col) {
  $("yaml-text").value = draftYaml(col);
  $("yaml-dialog").showModal();
}

let saving = null;

function openSave(col) {
  saving = col;
  $("save-error").textContent = "";
  $("save-name").value ||= `${state.base.name}-${col.label.toLowerCase()}`;
  $("save-dialog").showModal();
}

async function save() {
  const name = $("save-name").value.trim();
  const errorBox = $("save-error");
  errorBox.textContent = "";
  try {
    const { status } = await call("PUT", `/v1/pipelines/${encodeURIComponent(name)}`, { yaml: draftYaml(saving) });
    $("save-dialog").close();
    $("status").textContent = `saved ${name} (${status === 201 ? "new" : "replaced"}); it is served now`;
    await loadLibrary(state.base.name);
  } catch (err) {
    const lines = err.body?.errors?.map((e) => `line ${e.line}, column ${e.column}: ${e.message}`);
    errorBox.textContent = lines?.length ? lines.join("\n") : err.message;
  }
}

// ---------------------------------------------------------------------------------------------
// History, in this browser.

function loadHistory() {
  try {
    return JSON.parse(localStorage.getItem(HISTORY_STORE)) || [];
  } catch {
    return [];
  }
}

function addHistory(entry) {
  const list = [entry, ...loadHistory()].slice(0, HISTORY_LIMIT);
  localStorage.setItem(HISTORY_STORE, JSON.stringify(list));
  renderHistory();
}

function renderHistory() {
  const list = $("history");
  list.replaceChildren();
  for (const [i, h] of loadHistory().entries()) {
    const input = Object.values(h.vars || {}).join(" / ");
    const title =
      h.kind === "blind"
        ? `blind A/B on ${h.pipeline}: ${h.preferred ? `variant ${h.preferred} read better` : "tie"}`
        : `${h.pipeline}: ${h.columns.length} variant${h.columns.length > 1 ? "s" : ""}`;
    list.append(
      el("li", { testid: `history-${i}` },
        el("details", {},
          el("summary", {}, el("time", {}, new Date(h.time).toLocaleString()), ` ${title} — `, el("span", { class: "hint" }, input.slice(0, 80))),
          ...h.columns.map((c) =>
            el("div", { class: "history-column" },
              el("b", {}, `Variant ${c.label}`),
              el("span", { class: "hint" }, ` ${JSON.stringify(c.params)} · ${c.metrics}`),
              el("pre", {}, c.output),
            ),
          ),
          h.kind === "run" ? el("button", { onclick: () => restore(h) }, "Restore these variants") : null,
        ),
      ),
    );
  }
}

async function restore(h) {
  await pick(h.pipeline);
  state.columns = h.columns.map((c) => newColumn(c.draft, c.label));
  for (const [name, value] of Object.entries(h.vars || {})) {
    const input = $(`var-${name}`);
    if (input) input.value = value;
  }
  renderColumns();
}

// ---------------------------------------------------------------------------------------------

async function start() {
  $("api-key").value = apiKey();
  $("api-key").addEventListener("change", async (e) => {
    setApiKey(e.target.value.trim());
    await boot();
  });
  $("picker").addEventListener("change", (e) => pick(e.target.value));
  $("new-template").addEventListener("click", async () => {
    await pick($("picker").value);
    $("save-name").value = `${state.base.name}-new`;
    $("status").textContent = `new draft from ${state.base.name}`;
  });
  $("add-variant").addEventListener("click", () => duplicate(state.columns[state.columns.length - 1]));
  $("run-all").addEventListener("click", () => runColumns(state.columns));
  $("blind").addEventListener("click", startBlind);
  for (const b of document.querySelectorAll("#blind-panel button[data-choice]")) {
    b.addEventListener("click", () => chooseBlind(b.dataset.choice));
  }
  $("yaml-copy").addEventListener("click", async () => {
    const text = $("yaml-text").value;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      $("yaml-text").select();
      document.execCommand("copy");
    }
  });
  $("save-confirm").addEventListener("click", save);
  $("save-name").addEventListener("keydown", (e) => {
    if (e.key === "Enter") save();
  });
  $("clear-history").addEventListener("click", () => {
    localStorage.removeItem(HISTORY_STORE);
    renderHistory();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      runColumns(state.columns);
    }
  });
  renderHistory();
  await boot();
}

async function boot() {
  $("status").textContent = "";
  try {
    await loadLibrary();
    if (!state.library.length) {
      $("status").textContent = "no pipelines are loaded";
      return;
    }
    const last = localStorage.getItem("pipehost.playground.pipeline");
    await pick(state.library.some((p) => p.name === last) ? last : state.library[0].name);
    await initExperiments();
  } catch (err) {
    $("status").textContent =
      err.status === 401 ? "this server needs an API key: enter it above" : `cannot reach the server: ${err.message}`;
  }
}

start();
