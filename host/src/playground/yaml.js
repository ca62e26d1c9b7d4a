// A small YAML writer for pipeline drafts: block mappings and sequences, plain scalars where
// they read back as the same string, literal blocks for multi-line text, and JSON-style
// double-quoted strings (valid YAML) for everything else. The server parses what it writes
// with the same checks as a file on disk, so a mistake here shows as a located error.

const PLAIN_KEY = /^[A-Za-z_][A-Za-z0-9_-]*$/;
// Strings YAML would read as something else (booleans, null, numbers) must be quoted.
const SPECIAL = /^(?:true|false|yes|no|on|off|null|~|[-+]?(?:\d[\d_]*)?(?:\.\d*)?(?:e[-+]?\d+)?|[-+]?\.(?:inf|nan)|0x[0-9a-f]+|0o[0-7]+)$/i;

function plainOk(s) {
  if (s === "" || s !== s.trim() || SPECIAL.test(s)) return false;
  if (/^[-?:,[\]{}#&*!|>'"%@`]/.test(s)) return false;
  if (/: |\s#|:$|[\n\t\r]/.test(s)) return false;
  // Control and other invisible characters read best escaped.
  return !/[\p{Cc}\p{Cf}\u2028\u2029]/u.test(s);
}

function quoted(s) {
  return JSON.stringify(s);
}

function scalar(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "boolean") return String(v);
  if (typeof v === "number") {
    if (!Number.isFinite(v)) throw new Error(`cannot write ${v} in YAML`);
    return String(v);
  }
  const s = String(v);
  return plainOk(s) ? s : quoted(s);
}

function key(k) {
  return PLAIN_KEY.test(k) && !SPECIAL.test(k) ? k : quoted(k);
}

// A literal block (`|`, `|-`) keeps multi-line text readable; it cannot hold text that starts
// with a space on its first line, trailing spaces, or several trailing newlines.
function literal(s, indent) {
  if (!s.includes("\n") || /^[ \t]/.test(s) || /[ \t]\n|\n\n$|[ \t]$/.test(s)) return null;
  if (/[\p{Cc}\p{Cf}]/u.test(s.replace(/\n/g, "").replace(/\t/g, ""))) return null;
  const chomp = s.endsWith("\n") ? "|" : "|-";
  const body = s.endsWith("\n") ? s.slice(0, -1) : s;
  const pad = " ".repeat(indent);
  return chomp + "\n" + body.split("\n").map((l) => (l ? pad + l : "")).join("\n");
}

function isBlock(v) {
  return (Array.isArray(v) && v.length > 0) || (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length > 0);
}

function emit(v, indent, lines, prefix) {
  const pad = " ".repeat(indent);
  if (Array.isArray(v)) {
    v.forEach((item, i) => {
      const head = i === 0 && prefix !== null ? prefix : pad;
      if (isBlock(item) && !Array.isArray(item)) {
        // "- key: value" with the rest of the mapping under it.
        emit(item, indent + 2, lines, head + "- ");
      } else if (isBlock(item)) {
        lines.push(head + "-");
        emit(item, indent + 2, lines, null);
      } else {
        lines.push(head + "- " + inline(item, indent + 2));
      }
    });
    return;
  }
  Object.entries(v).forEach(([k, val], i) => {
    const head = (i === 0 && prefix !== null ? prefix : pad) + key(k) + ":";
    if (val === undefined) return;
    if (isBlock(val)) {
      lines.push(head);
      emit(val, Array.isArray(val) ? indent + 2 : indent + 2, lines, null);
    } else {
      lines.push(head + " " + inline(val, indent + 2));
    }
  });
}

function inline(v, indent) {
  if (Array.isArray(v)) return "[]";
  if (v && typeof v === "object") return "{}";
  if (typeof v === "string") return literal(v, indent) ?? scalar(v);
  return scalar(v);
}

/** `value` (a mapping) as a YAML document, after `comment` lines (each prefixed `# `). */
export function toYaml(value, comment = "") {
  const lines = comment ? comment.split("\n").map((l) => `# ${l}`.trimEnd()) : [];
  emit(value, 0, lines, null);
  return lines.join("\n") + "\n";
}
