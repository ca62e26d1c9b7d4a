// Helpers for plugin tests (natively, with `node --test`).
import assert from "node:assert/strict";

// Splits `text` into chunks of the given sizes in code points, cycled.
export function chunks(text, sizes) {
  const chars = Array.from(text);
  const ns = sizes.filter((n) => n > 0);
  const out = [];
  for (let i = 0, k = 0; i < chars.length; k++) {
    const n = ns.length ? ns[k % ns.length] : chars.length;
    out.push(chars.slice(i, i + n).join(""));
    i += n;
  }
  return out;
}

// Streams `text` through `plugin`; returns [output, stopped]. Stops feeding once `stop` is set.
export function runStream(plugin, text, configJson = "{}", sizes = [1]) {
  const stream = plugin.open(plugin.config(configJson), {});
  let out = "";
  let stopped = false;
  for (const chunk of chunks(text, sizes)) {
    const pushed = stream.push(chunk);
    if (typeof pushed === "string") out += pushed;
    else {
      out += pushed.emit ?? "";
      if (pushed.stop) {
        stopped = true;
        break;
      }
    }
  }
  return [out + stream.finish(), stopped];
}

// The streaming contract: for this chunking, the stream's output equals `process`.
export function assertStreamMatchesWhole(plugin, text, configJson = "{}", sizes = [1]) {
  const whole = plugin.process(text, {}, plugin.config(configJson));
  const [streamed] = runStream(plugin, text, configJson, sizes);
  assert.equal(streamed, whole, `stream != whole for chunks ${JSON.stringify(sizes)} on ${JSON.stringify(text)}`);
}
