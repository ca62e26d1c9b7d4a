"""`cliche`: removes or rewrites the stock phrases a chat model falls back on ("I'm sorry, but",
"Great question!", "作为一个AI", "希望这对你有帮助" ...), the ones the recipes' personas tell the
model to avoid. A Pipehost post-processor written in Python; streams incrementally.

Config (the stage's ``config:`` block)::

    config:
      presets: [en, zh]          # built-in phrase lists (default: both)
      rules:                     # your own phrase -> replacement ("" removes it)
        "To be honest, ": ""
      keep: ["That's great!"]    # preset phrases to leave alone
      case_sensitive: false      # ASCII letters match in any case (default)

Matching is leftmost-longest over all phrases; a straight apostrophe in a phrase also matches a
curly one (``I'm`` / ``I’m``). When a match starts with a capital and its replacement with a
small letter, the replacement is capitalised ("That's great" -> "Nice"). Streaming holds back
only a tail that could still grow into a phrase, so the stream's output equals ``process``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List

from pipehost_plugin import InvalidConfig, PostProcessor, Streamer, export_post_processor

PRESETS: Dict[str, Dict[str, str]] = {
    "en": {
        "As an AI language model, ": "",
        "As an AI language model, I": "I",
        "As an AI, ": "",
        "Great question! ": "",
        "Great question!": "",
        "That's a great question! ": "",
        "What a great question! ": "",
        " I hope this helps!": "",
        " I hope this helps.": "",
        "I hope this helps!": "",
        "I hope this helps.": "",
        " Hope this helps!": "",
        "I'm sorry to hear that": "That sounds hard",
        "I'm sorry, but": "Still,",
        "I'm sorry": "Sadly",
        "That's great!": "Nice!",
        "that's great": "nice",
        "I understand how you feel. ": "",
        "Feel free to ask if you have any other questions!": "",
    },
    "zh": {
        "作为一个AI语言模型，": "",
        "作为一个AI语言模型,": "",
        "作为一个人工智能，": "",
        "作为一个AI，": "",
        "作为一个AI,": "",
        "作为AI，": "",
        "作为一个AI": "",
        "我理解你的感受。": "",
        "我理解你的感受，": "",
        "我能理解你的感受，": "",
        "希望这对你有帮助！": "",
        "希望这对你有帮助。": "",
        "希望对你有所帮助！": "",
        "希望对你有所帮助。": "",
        "这是一个很好的问题！": "",
        "这是一个很好的问题。": "",
        "如果你还有其他问题，请随时告诉我！": "",
    },
}

def _fold_case(text: str) -> str:
    """ASCII letters to lower case and the curly apostrophe to a straight one; every other
    character is kept, so indexes into the result are indexes into ``text``. (Equal to
    ``str.translate`` with a table, which costs ~50 ns a character on non-ASCII text; bytes'
    ``lower`` changes only ASCII letters, which never occur inside a multi-byte UTF-8
    sequence.)"""
    return text.encode("utf-8", "surrogatepass").lower().decode("utf-8", "surrogatepass").replace("’", "'")


def _fold_quotes(text: str) -> str:
    return text.replace("’", "'")


@dataclass
class Config:
    presets: List[str] = field(default_factory=lambda: ["en", "zh"])
    rules: Dict[str, str] = field(default_factory=dict)
    keep: List[str] = field(default_factory=list)
    case_sensitive: bool = False


class Rules:
    """The compiled phrase list of one config."""

    def __init__(self, config: Config):
        table: Dict[str, str] = {}
        for name in config.presets:
            if name not in PRESETS:
                raise InvalidConfig(f"presets: unknown preset {name!r}, expected one of {', '.join(PRESETS)}")
            table.update(PRESETS[name])
        for phrase in config.keep:
            table.pop(phrase, None)
        for phrase, replacement in config.rules.items():
            if not phrase:
                raise InvalidConfig("rules: a phrase must not be empty")
            table[phrase] = replacement
        fold = _fold_quotes if config.case_sensitive else _fold_case
        self.fold = fold
        # Keyed by the folded phrase; the later entry (user rules) wins.
        self.replacement = {fold(p): r for p, r in table.items()}
        self.phrases = sorted(self.replacement, key=len, reverse=True)
        self.longest = len(self.phrases[0]) if self.phrases else 0
        if self.phrases:
            # Matched against the folded text (case and apostrophes already folded, same
            # indexes), so the pattern is plain literals: `re` then skips ahead to a possible
            # first character instead of trying every alternative at every position, as it
            # must with IGNORECASE. Longest first: at one position, regex alternation takes the
            # first that matches, so this is leftmost-longest.
            self.regex = re.compile("|".join(re.escape(p) for p in self.phrases))
        else:
            self.regex = None

    def replace(self, matched: str, key: str) -> str:
        out = self.replacement[key]
        if out and matched[:1].isupper() and out[:1].islower():
            out = out[0].upper() + out[1:]
        return out

    def hold_point(self, folded: str, start: int) -> int:
        """The first index >= start whose rest (of the folded text) could still grow into a
        longer phrase."""
        for j in range(max(start, len(folded) - self.longest + 1), len(folded)):
            tail = folded[j:]
            if any(len(p) > len(tail) and p.startswith(tail) for p in self.phrases):
                return j
        return len(folded)

    def rewrite(self, text: str, final: bool):
        """Rewrites ``text``; returns (output, how much of ``text`` it consumed). Unless
        ``final``, stops where the rest could still become a phrase."""
        if self.regex is None:
            return text, len(text)
        folded = self.fold(text)
        out: List[str] = []
        pos = 0
        while True:
            hold = len(text) if final else self.hold_point(folded, pos)
            m = self.regex.search(folded, pos)
            if m is None or m.start() >= hold:
                out.append(text[pos:hold])
                return "".join(out), hold
            start, end = m.span()
            out.append(text[pos:start])
            out.append(self.replace(text[start:end], m.group()))
            pos = end


# Rules per config, keyed by the config's fields. Filled with the default config's at import,
# which componentize-py runs at build time: the snapshot every call starts from already holds
# its compiled regex, so a call with the default config compiles nothing. (A call is a fresh
# instance, so what a call adds here is gone after it; natively the cache is bounded.)
_RULES: Dict[tuple, Rules] = {}


def rules_for(config: Config) -> Rules:
    key = (tuple(config.presets), tuple(config.rules.items()), tuple(config.keep), config.case_sensitive)
    rules = _RULES.get(key)
    if rules is None:
        rules = Rules(config)
        if len(_RULES) >= 16:
            _RULES.clear()
        _RULES[key] = rules
    return rules


rules_for(Config())


class ClicheStream(Streamer):
    def __init__(self, rules: Rules):
        self.rules = rules
        self.pending = ""

    def push(self, chunk: str) -> str:
        out, used = self.rules.rewrite(self.pending + chunk, final=False)
        self.pending = (self.pending + chunk)[used:]
        return out

    def finish(self) -> str:
        out, _ = self.rules.rewrite(self.pending, final=True)
        self.pending = ""
        return out


class Cliche(PostProcessor):
    Config = Config

    def check_config(self, config: Config) -> None:
        rules_for(config)

    def process(self, text, ctx, config):
        return rules_for(config).rewrite(text, final=True)[0]

    def open(self, config, ctx):
        return ClicheStream(rules_for(config))


export_post_processor(Cliche)
