// plaintext's logic, natively (node --test). The same cases run through the host as a component
// in tests/plugins_js.rs.
import test from "node:test";
import assert from "node:assert/strict";
import { InvalidConfig } from "../../sdk-js/pipehost.js";
import { assertStreamMatchesWhole, runStream } from "../../sdk-js/testing.js";
import { Plaintext } from "../plugin.js";

const p = new Plaintext();
const run = (text, config = "{}") => p.process(text, {}, p.config(config));

test("headings, emphasis, lists, quotes", () => {
  assert.equal(run("# 秋夜\n\n**月光**洒在*窗台*上。"), "秋夜\n\n月光洒在窗台上。");
  assert.equal(run("## Title\n- one\n* two\n1. three\n> quoted _here_"), "Title\none\ntwo\nthree\nquoted here");
  assert.equal(run("~~old~~ new, `code` and __bold__"), "old new, code and bold");
  assert.equal(run("  - nested"), "  nested", "indentation is kept");
});

test("code fences go, their content stays verbatim", () => {
  assert.equal(run("Look:\n```js\nlet a = b * c; // **x**\n```\nDone."), "Look:\nlet a = b * c; // **x**\nDone.");
  assert.equal(run("~~~\n# not a heading\n~~~"), "# not a heading\n");
});

test("horizontal rules are dropped", () => {
  assert.equal(run("a\n---\nb\n* * *\nc"), "a\nb\nc");
});

test("markers that are not markup stay", () => {
  assert.equal(run("2 * 3 = 6, snake_case, a*b, 1~2"), "2 * 3 = 6, snake_case, a*b, 1~2");
  assert.equal(run("#hashtag and 3.14"), "#hashtag and 3.14");
});

test("config switches rules off and rejects unknown fields", () => {
  assert.equal(run("# T\n**b**", '{"headings": false}'), "# T\nb");
  assert.equal(run("- x", '{"lists": false}'), "- x");
  assert.throws(() => p.config('{"heading": true}'), (e) => e instanceof InvalidConfig && e.message.startsWith("heading: unknown field"));
  assert.throws(() => p.config('{"emphasis": "yes"}'), (e) => e instanceof InvalidConfig && e.message === "emphasis: expected a boolean, got a string");
});

test("the stream emits a line's text before its newline", () => {
  const s = p.open(p.config("{}"), {});
  assert.equal(s.push("## He"), "He");
  assert.equal(s.push("llo **wor"), "llo wor");
  assert.equal(s.push("ld**\n- "), "ld\n");
  assert.equal(s.push("x"), "x");
  assert.equal(s.finish(), "");
});

const ATOMS = ["#", "## ", "-", "- ", "*", "**", "_", "__", "~~", "~", "`", "```", "\n", " ", "  ", ">", "> ",
  "1.", "1. ", "word", "中文", "---", "x", "3", "👍"];

test("stream equals whole for random texts and chunkings", () => {
  let seed = 14;
  const rnd = (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  for (let k = 0; k < 400; k++) {
    const text = Array.from({ length: rnd(30) }, () => ATOMS[rnd(ATOMS.length)]).join("");
    const sizes = [rnd(6) + 1, rnd(3) + 1];
    assertStreamMatchesWhole(p, text, "{}", sizes);
    assertStreamMatchesWhole(p, text, '{"emphasis": false, "rules": false}', sizes);
  }
  assert.deepEqual(runStream(p, "**a**", "{}", [1]), ["a", false]);
});
