// Component glue: maps the WIT exports onto the SDK classes. Plugin authors never import it;
// scripts/build-plugins.sh generates the entry module that imports plugin.js and re-exports
// these.
import host from "pipehost:plugin/host@0.1.0";
import * as sdk from "./pipehost.js";

sdk.setLogSink((level, message) => host.log(level, message));

// QuickJS has no `console`: give plugins one that writes to the host log.
if (typeof globalThis.console === "undefined") {
  const line = (args) => args.map((a) => (typeof a === "string" ? a : JSON.stringify(a))).join(" ");
  globalThis.console = {
    log: (...a) => host.log("info", line(a)),
    info: (...a) => host.log("info", line(a)),
    debug: (...a) => host.log("debug", line(a)),
    warn: (...a) => host.log("warn", line(a)),
    error: (...a) => host.log("error", line(a)),
  };
}

// SDK errors keep their kind; anything else is `internal` with its name and message.
function witError(e) {
  if (e instanceof sdk.PluginError) return { tag: e.kind, val: e.message };
  host.log("error", `uncaught ${e && e.stack ? e.stack : String(e)}`);
  const name = e && e.name ? e.name : "Error";
  const message = e && e.message !== undefined ? e.message : String(e);
  return { tag: "internal", val: `${name}: ${message}` };
}

function guard(f) {
  try {
    return f();
  } catch (e) {
    throw witError(e);
  }
}

function str(v, what) {
  if (typeof v !== "string") throw new sdk.Internal(`${what} returned ${typeof v}, expected a string`);
  return v;
}

const context = (c) => ({ pipeline: c.pipeline, requestId: c.requestId, stage: c.stage });

class Streamer {
  constructor(inner) {
    this.inner = inner;
  }
  static open(config, ctx) {
    const p = sdk.registered("post-processor");
    return new Streamer(guard(() => p.open(p.config(config), context(ctx))));
  }
  push(chunk) {
    return guard(() => {
      const out = this.inner.push(chunk);
      if (typeof out === "string") return { emit: out, stop: false };
      return { emit: str(out.emit ?? "", "push"), stop: Boolean(out.stop) };
    });
  }
  finish() {
    return guard(() => str(this.inner.finish(), "finish"));
  }
}

export const postProcess = {
  validateConfig(config) {
    guard(() => sdk.registered("post-processor").config(config));
  },
  process(text, ctx, config) {
    return guard(() => {
      const p = sdk.registered("post-processor");
      return str(p.process(text, context(ctx), p.config(config)), "process");
    });
  },
  Streamer,
};

export const promptBuild = {
  validateConfig(config) {
    guard(() => sdk.registered("prompt-builder").config(config));
  },
  build(vars, history, ctx, config) {
    return guard(() => {
      const b = sdk.registered("prompt-builder");
      const out = b.build(vars, history, context(ctx), b.config(config));
      return out.map((m) => ({ role: str(m.role, "build"), content: str(m.content, "build") }));
    });
  },
};
