// `plaintext`: strips Markdown markup for apps that show plain text (poems, chat bubbles): heading
// markers, emphasis and strikethrough markers, inline-code backticks, list and quote markers,
// code fences and horizontal rules. A Pipehost post-processor written in JavaScript; streams.
//
// Config (the stage's `config:` block):
//
//   config:
//     headings: true     # "## Title" -> "Title"
//     emphasis: true     # **bold**, *it*, __b__, _i_, ~~s~~, `code` -> their text
//     lists: true        # "- item", "* item", "1. item" -> "item" (indentation kept)
//     quotes: true       # "> text" -> "text"
//     code_fences: true  # drops ``` / ~~~ fence lines; the code inside is kept as it is
//     rules: true        # drops "---", "***", "___" lines
//
// Rules are line-based, so the stream emits a line's text as soon as it is decided: a line
// start is held until its marker is known, a run of `*`, `_`, `~` or backticks until the
// character after it is known. Emphasis markers are removed unless they sit between two spaces
// (`2 * 3`) or inside a Latin word (`snake_case`, `a*b`); Chinese text has no spaces, so
// `这是**重点**` -> `这是重点`. For any chunking the stream's output equals `process`.

import { PostProcessor, Streamer, exportPostProcessor } from "../sdk-js/pipehost.js";

const isSpace = (c) => c === undefined || /\s/.test(c);
const isWordish = (c) => c !== undefined && /[A-Za-z0-9\u00C0-\u024F]/.test(c);

// Decides a line's start: returns { kind, body } where body is where the line's text begins,
// or null while the (incomplete) line could still turn out to be several things.
function lineStart(line, complete, inFence, c) {
  const fence = /^ {0,3}(```|~~~)/;
  if (inFence) {
    if (fence.test(line)) return { kind: "fence" };
    if (!complete && /^ {0,3}(`{0,2}|~{0,2})$/.test(line)) return null;
    return { kind: "code", body: 0 };
  }
  if (c.code_fences) {
    if (fence.test(line)) return { kind: "fence" };
    if (!complete && /^ {0,3}(`{1,2}|~{1,2})$/.test(line)) return null;
  }
  if (c.rules) {
    if (complete && /^ {0,3}([-*_])( *\1){2,} *$/.test(line)) return { kind: "rule" };
    if (!complete && /^ {0,3}([-*_])( *\1)* *$/.test(line)) return null;
  }
  // The first token: only a marker-like one needs to wait for the space after it.
  const m = /^(\s*)(\S*)(\s?)/.exec(line);
  const [, indent, token, space] = m;
  const markerLike = /^(#{1,6}|>|[-*+]|\d{1,9}[.)])$/;
  if (!complete && !space && (token === "" || markerLike.test(token) || /^(#+|\d+)$/.test(token))) return null;
  if (c.headings && /^#{1,6}$/.test(token) && indent.length <= 3 && (space || complete))
    return { kind: "heading", body: m[0].length };
  if (c.quotes && token === ">" && indent.length <= 3) return { kind: "quote", body: m[0].length };
  if (c.quotes && token.startsWith(">") && indent.length <= 3) return { kind: "quote", body: indent.length + 1 };
  if (c.lists && /^([-*+]|\d{1,9}[.)])$/.test(token) && (space || complete)) {
    return { kind: "list", body: m[0].length, keep: indent };
  }
  return { kind: "text", body: 0 };
}

// The inline text of `line` from `from`: removes emphasis-like marker runs. Unless `complete`,
// stops before a run whose next character is not known yet. Returns the output. The text
// between runs is copied in slices (a regex finds the next run): per character it would be a
// string append per character, most of the call's time in QuickJS.
const MARKER_RUN = /([*_~`])\1*/g;
function inline(line, from, complete, c) {
  if (!c.emphasis) return line.slice(from);
  let out = "";
  let copied = from; // line[from..copied] has been handled
  MARKER_RUN.lastIndex = from;
  let m;
  while ((m = MARKER_RUN.exec(line)) !== null) {
    const i = m.index;
    const j = i + m[0].length;
    out += line.slice(copied, i);
    if (j === line.length && !complete) return out; // the run may grow, or its next char decides
    const prev = i > from ? line[i - 1] : undefined;
    const next = line[j];
    const ch = m[1];
    const keep =
      (ch === "~" && j - i < 2) ||
      (isSpace(prev) && isSpace(next)) ||
      (isWordish(prev) && isWordish(next));
    if (keep) out += m[0];
    copied = j;
  }
  return out + line.slice(copied);
}

// Renders one line (without its "\n"). `complete`: the line's end is known. Returns the text
// that is final (for an incomplete line, a prefix of what the complete line gives) and the
// fence state after the line.
function renderLine(line, complete, inFence, c) {
  const start = lineStart(line, complete, inFence, c);
  if (start === null) return { out: "", inFence };
  switch (start.kind) {
    case "fence":
      return { out: "", inFence: complete ? !inFence : inFence, dropped: true };
    case "rule":
      return { out: "", inFence, dropped: true };
    case "code":
      return { out: line, inFence };
    case "list":
      return { out: start.keep + inline(line, start.body, complete, c), inFence };
    default:
      return { out: inline(line, start.body, complete, c), inFence };
  }
}

class PlaintextStream extends Streamer {
  constructor(config) {
    super();
    this.c = config;
    this.inFence = false;
    this.line = ""; // the current, incomplete line
    this.sent = 0; // how much of its rendering went out already
  }
  push(chunk) {
    let emit = "";
    let at = 0; // chunk[..at] is handled
    let nl;
    while ((nl = chunk.indexOf("\n", at)) !== -1) {
      this.line += chunk.slice(at, nl);
      at = nl + 1;
      emit += this.endLine(true);
    }
    this.line += chunk.slice(at);
    const { out } = renderLine(this.line, false, this.inFence, this.c);
    emit += out.slice(this.sent);
    this.sent = out.length;
    return emit;
  }
  // Finishes the current line: with its "\n" (`newline`) or as the text's last line.
  endLine(newline) {
    const r = renderLine(this.line, true, this.inFence, this.c);
    const text = r.out.slice(this.sent) + (newline && !r.dropped ? "\n" : "");
    this.inFence = r.inFence;
    this.line = "";
    this.sent = 0;
    return text;
  }
  finish() {
    return this.line === "" ? "" : this.endLine(false);
  }
}

export class Plaintext extends PostProcessor {
  static defaults = { headings: true, emphasis: true, lists: true, quotes: true, code_fences: true, rules: true };

  process(text, _ctx, config) {
    const s = new PlaintextStream(config);
    return s.push(text) + s.finish();
  }

  open(config, _ctx) {
    return new PlaintextStream(config);
  }
}

exportPostProcessor(Plaintext);
