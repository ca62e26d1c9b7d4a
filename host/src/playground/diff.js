// What a stage changed: a diff of its input and output over words (Latin), single characters
// (CJK and other scripts without spaces), whitespace and punctuation, by longest common
// subsequence. Rendered with text nodes only.

const TOKEN = /[\p{L}\p{N}_'’-]+|\s+|./gsu;
const CJK = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}]/u;

/** Splits text into diff tokens; CJK runs become one token per character. */
export function tokens(text) {
  const out = [];
  for (const m of text.matchAll(TOKEN)) {
    const t = m[0];
    if (CJK.test(t)) out.push(...t); // code points
    else out.push(t);
  }
  return out;
}

// Past this many cells the table would be too large for a page: diff only the changed middle.
const MAX_CELLS = 4_000_000;

/** `[{op: "eq" | "del" | "ins", text}]` turning `a` into `b`. */
export function diff(a, b) {
  const x = tokens(a);
  const y = tokens(b);
  // Common prefix and suffix cost nothing and shrink the table.
  let start = 0;
  while (start < x.length && start < y.length && x[start] === y[start]) start++;
  let endX = x.length;
  let endY = y.length;
  while (endX > start && endY > start && x[endX - 1] === y[endY - 1]) {
    endX--;
    endY--;
  }
  const ops = [];
  const push = (op, text) => {
    if (!text) return;
    const last = ops[ops.length - 1];
    if (last && last.op === op) last.text += text;
    else ops.push({ op, text });
  };
  push("eq", x.slice(0, start).join(""));
  const xs = x.slice(start, endX);
  const ys = y.slice(start, endY);
  const n = xs.length;
  const m = ys.length;
  if (n * m > MAX_CELLS) {
    push("del", xs.join(""));
    push("ins", ys.join(""));
  } else {
    // lcs[i][j]: the LCS length of xs[i..] and ys[j..], in one flat array.
    const w = m + 1;
    const lcs = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        lcs[i * w + j] =
          xs[i] === ys[j] ? lcs[(i + 1) * w + j + 1] + 1 : Math.max(lcs[(i + 1) * w + j], lcs[i * w + j + 1]);
      }
    }
    let i = 0;
    let j = 0;
    while (i < n && j < m) {
      if (xs[i] === ys[j]) {
        push("eq", xs[i++]);
        j++;
      } else if (lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
        push("del", xs[i++]);
      } else {
        push("ins", ys[j++]);
      }
    }
    push("del", xs.slice(i).join(""));
    push("ins", ys.slice(j).join(""));
  }
  push("eq", x.slice(endX).join(""));
  return ops;
}

/** Fills `container` with the diff of `a` → `b`: `<del>` removed, `<ins>` added. */
export function renderDiff(container, a, b) {
  container.replaceChildren();
  const ops = diff(a, b);
  if (ops.every((o) => o.op === "eq")) {
    const same = document.createElement("span");
    same.className = "unchanged";
    same.textContent = "(no change)";
    container.append(same);
  }
  for (const { op, text } of ops) {
    if (op === "eq") {
      container.append(document.createTextNode(text));
    } else {
      const el = document.createElement(op);
      el.textContent = text;
      container.append(el);
    }
  }
  return ops;
}
