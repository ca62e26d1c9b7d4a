"""Test component: a prompt builder written with the Python SDK's ``PromptBuilder``;
tests/plugins_python.rs builds prompts with it through the host. Never shipped. Its JavaScript
twin is tests/guests/prompt-js (same config, same output).

Config: {"system": str (required), "prefix": str, "max_history": int >= 0}. Output: a system
message (``system`` and the stage's name), the last ``max_history`` history messages as they
are, then a user message: ``prefix`` + the ``question`` variable, taken literally (missing:
invalid-input).
"""

from dataclasses import dataclass

from pipehost_plugin import InvalidConfig, InvalidInput, Message, PromptBuilder, export_prompt_builder


@dataclass
class Config:
    system: str
    prefix: str = ""
    max_history: int = 10


class Prompt(PromptBuilder):
    Config = Config

    def check_config(self, config: Config) -> None:
        if config.max_history < 0:
            raise InvalidConfig("max_history: must be 0 or more")

    def build(self, vars, history, ctx, config):
        values = dict(vars)
        if "question" not in values:
            raise InvalidInput("missing variable `question`")
        kept = history[-config.max_history :] if config.max_history else []
        return [
            Message("system", f"{config.system} [{ctx.stage}]"),
            *kept,
            Message("user", config.prefix + values["question"]),
        ]


export_prompt_builder(Prompt)
