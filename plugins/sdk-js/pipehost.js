// The Pipehost plugin SDK for JavaScript.
//
// A post-processor extends `PostProcessor` and registers itself; a prompt builder extends
// `PromptBuilder`:
//
//   import { PostProcessor, exportPostProcessor } from "../sdk-js/pipehost.js";
//   class Shout extends PostProcessor {
//     static defaults = { suffix: "" };
//     process(text, ctx, config) { return text.toUpperCase() + config.suffix; }
//   }
//   exportPostProcessor(Shout);
//
// The module must be called `plugin.js`; scripts/build-plugins.sh builds it with
// componentize-qjs (QuickJS) into one .wasm component. Its logic is plain JavaScript, tested
// natively with `node --test`; `testing.js` checks the streaming contract.
//
// Errors: throw `InvalidConfig`, `InvalidInput` or `Internal`; any other exception becomes
// `internal` with its name and message (the stack goes to the host log).

export class PluginError extends Error {
  static kind = "internal";
  get kind() {
    return this.constructor.kind;
  }
}
export class InvalidConfig extends PluginError {
  static kind = "invalid-config";
}
export class InvalidInput extends PluginError {
  static kind = "invalid-input";
}
export class Internal extends PluginError {
  static kind = "internal";
}

// The host's log. In a component the glue points it at the host's `log` import (lines are
// tagged with the plugin and request id); natively it writes to stderr.
let sink = (level, message) => console.error(`[${level}] ${message}`);
export const log = {
  trace: (m) => sink("trace", String(m)),
  debug: (m) => sink("debug", String(m)),
  info: (m) => sink("info", String(m)),
  warn: (m) => sink("warn", String(m)),
  error: (m) => sink("error", String(m)),
};
export function setLogSink(f) {
  sink = f;
}

const describe = (v) =>
  v === null ? "null" : Array.isArray(v) ? "an array" : typeof v === "object" ? "an object" : `a ${typeof v}`;

function sameShape(value, example, path) {
  if (example === null || example === undefined) return value; // anything goes
  if (Array.isArray(example)) {
    if (!Array.isArray(value)) throw new InvalidConfig(`${path}: expected an array, got ${describe(value)}`);
    if (example.length === 0) return value;
    return value.map((v, i) => sameShape(v, example[0], `${path}[${i}]`));
  }
  if (typeof example === "object") {
    if (value === null || typeof value !== "object" || Array.isArray(value))
      throw new InvalidConfig(`${path}: expected an object, got ${describe(value)}`);
    return value;
  }
  if (typeof value !== typeof example)
    throw new InvalidConfig(`${path}: expected a ${typeof example}, got ${describe(value)}`);
  return value;
}

const copy = (v) => (v === null || typeof v !== "object" ? v : JSON.parse(JSON.stringify(v)));

// Parses a stage's JSON config (empty means `{}`) against `defaults`, an object of field ->
// default value: unknown fields are rejected, each value must have its default's type
// (arrays: the type of the default's first element, if any; objects: any object), missing
// fields take the default. Errors are `InvalidConfig` naming the field. With `defaults`
// null, the parsed object is returned as it is.
export function parseConfig(text, defaults = null) {
  let value;
  try {
    value = JSON.parse(text.trim() === "" ? "{}" : text);
  } catch (e) {
    throw new InvalidConfig(`not valid JSON: ${e.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value))
    throw new InvalidConfig(`config: expected an object, got ${describe(value)}`);
  if (defaults === null) return value;
  for (const key of Object.keys(value)) {
    if (!Object.hasOwn(defaults, key)) {
      const expected = Object.keys(defaults).map((k) => `\`${k}\``).join(", ") || "none";
      throw new InvalidConfig(`${key}: unknown field \`${key}\`, expected one of ${expected}`);
    }
  }
  const out = {};
  for (const [key, def] of Object.entries(defaults)) {
    out[key] = Object.hasOwn(value, key) ? sameShape(value[key], def, key) : copy(def);
  }
  return out;
}

// An incremental stream: `push(chunk)` returns the text that is final now (a string, or
// `{ emit, stop }` to stop generation); `finish()` returns the rest.
export class Streamer {
  push(_chunk) {
    throw new Internal("Streamer.push is not implemented");
  }
  finish() {
    throw new Internal("Streamer.finish is not implemented");
  }
}

// The default stream: buffers every chunk and runs `process` at `finish`.
class Buffered extends Streamer {
  constructor(plugin, config, ctx) {
    super();
    this.plugin = plugin;
    this.config = config;
    this.ctx = ctx;
    this.parts = [];
  }
  push(chunk) {
    this.parts.push(chunk);
    return "";
  }
  finish() {
    return this.plugin.process(this.parts.join(""), this.ctx, this.config);
  }
}

// A post-processor. `static defaults` describes the config (see `parseConfig`).
export class PostProcessor {
  static defaults = null;
  // Checks what the types cannot (ranges, consistency); throw InvalidConfig.
  checkConfig(_config) {}
  process(_text, _ctx, _config) {
    throw new Internal("process is not implemented");
  }
  // The default stream buffers and calls `process` at `finish`; override for incremental
  // output (for any chunking, the output must equal `process(text)`).
  open(config, ctx) {
    return new Buffered(this, config, ctx);
  }
  config(text) {
    const config = parseConfig(text, this.constructor.defaults);
    this.checkConfig(config);
    return config;
  }
}

// A prompt builder: `build(vars, history, ctx, config)` returns [{role, content}, ...].
// `vars` is a list of [name, value] pairs; values are data, never template code.
export class PromptBuilder {
  static defaults = null;
  checkConfig(_config) {}
  build(_vars, _history, _ctx, _config) {
    throw new Internal("build is not implemented");
  }
  config(text) {
    const config = parseConfig(text, this.constructor.defaults);
    this.checkConfig(config);
    return config;
  }
}

const exported = {};
export function exportPostProcessor(cls) {
  if (!(cls.prototype instanceof PostProcessor)) throw new TypeError("exportPostProcessor takes a PostProcessor subclass");
  exported["post-processor"] = new cls();
  return cls;
}
export function exportPromptBuilder(cls) {
  if (!(cls.prototype instanceof PromptBuilder)) throw new TypeError("exportPromptBuilder takes a PromptBuilder subclass");
  exported["prompt-builder"] = new cls();
  return cls;
}
export function registered(world) {
  const p = exported[world];
  if (!p) throw new Internal(`plugin.js registered no ${world}: call exportPostProcessor(...) or exportPromptBuilder(...)`);
  return p;
}
