// Test component: the JavaScript counterpart of tests/guests/evil, a post-processor that
// misbehaves as its config says; tests/plugins_js.rs drives it through the host. Never shipped.
//
// Config: {"mode": MODE, "in": "process" | "push", ...}. Modes: ok (echo), loop, alloc (`bytes`:
// one ArrayBuffer, every page touched), grow (1 MiB buffers forever), output (`bytes` of "x"),
// amplify (`factor`), globals (lists the capabilities JS could reach: expected none), stdout
// (console.log / console.error), log, invalid-input, throw (an uncaught TypeError), stop.
import { InvalidInput, PostProcessor, Streamer, exportPostProcessor, log } from "../../../plugins/sdk-js/pipehost.js";

function run(c, text) {
  switch (c.mode) {
    case "ok":
    case "stop":
      return text;
    case "loop":
      for (let i = 0; ; i++) {}
    case "alloc": {
      const block = new Uint8Array(c.bytes);
      for (let i = 0; i < block.length; i += 4096) block[i] = 1;
      return text;
    }
    case "grow": {
      const blocks = [];
      for (;;) {
        const b = new Uint8Array(1 << 20);
        for (let i = 0; i < b.length; i += 4096) b[i] = 1;
        blocks.push(b);
      }
    }
    case "output":
      return "x".repeat(c.bytes);
    case "amplify":
      return text.repeat(c.factor);
    case "globals": {
      const names = ["process", "require", "fetch", "XMLHttpRequest", "WebSocket", "Deno", "Bun", "std", "os"];
      const found = names.filter((n) => typeof globalThis[n] !== "undefined");
      return `reachable: ${found.join(",") || "none"}`;
    }
    case "stdout":
      console.log(`to stdout: ${text}`);
      console.error(`to stderr: ${text}`);
      return text;
    case "log":
      for (const level of ["trace", "debug", "info", "warn", "error"]) log[level](`evil-js log ${level}`);
      return text;
    case "invalid-input":
      throw new InvalidInput("evil-js: invalid input requested");
    case "throw":
      null.boom();
    default:
      throw new InvalidInput(`unknown mode ${c.mode}`);
  }
}

class Stream extends Streamer {
  constructor(c) {
    super();
    this.c = c;
    this.parts = [];
  }
  push(chunk) {
    if (this.c.in === "push") return { emit: run(this.c, chunk), stop: this.c.mode === "stop" };
    this.parts.push(chunk);
    return "";
  }
  finish() {
    return this.c.in === "push" ? "" : run(this.c, this.parts.join(""));
  }
}

class EvilJs extends PostProcessor {
  static defaults = { mode: "ok", in: "process", bytes: 0, factor: 1 };
  process(text, _ctx, c) {
    return c.in === "process" ? run(c, text) : text;
  }
  open(c, _ctx) {
    return new Stream(c);
  }
}

exportPostProcessor(EvilJs);
