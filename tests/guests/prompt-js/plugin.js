// Test component: a prompt builder written with the JavaScript SDK's `PromptBuilder`;
// tests/plugins_js.rs builds prompts with it through the host. Never shipped. Its Python twin
// is tests/guests/prompt-py (same config, same output).
//
// Config: {"system": string (required), "prefix": string, "max_history": integer >= 0}.
// Output: a system message (`system` and the stage's name), the last `max_history` history
// messages as they are, then a user message: `prefix` + the `question` variable, taken
// literally (missing: invalid-input).
import { InvalidConfig, InvalidInput, PromptBuilder, exportPromptBuilder } from "../../../plugins/sdk-js/pipehost.js";

class Prompt extends PromptBuilder {
  static defaults = { system: null, prefix: "", max_history: 10 };

  checkConfig(c) {
    if (typeof c.system !== "string") throw new InvalidConfig("system: a string is required");
    if (!Number.isInteger(c.max_history) || c.max_history < 0)
      throw new InvalidConfig("max_history: must be 0 or more");
  }

  build(vars, history, ctx, c) {
    const question = vars.find(([name]) => name === "question");
    if (!question) throw new InvalidInput("missing variable `question`");
    const kept = c.max_history ? history.slice(-c.max_history) : [];
    return [
      { role: "system", content: `${c.system} [${ctx.stage}]` },
      ...kept.map((m) => ({ role: m.role, content: m.content })),
      { role: "user", content: c.prefix + question[1] },
    ];
  }
}

exportPromptBuilder(Prompt);
