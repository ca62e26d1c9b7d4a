"""The Pipehost plugin SDK for Python.

A post-processor subclasses :class:`PostProcessor` and registers itself; a prompt builder
subclasses :class:`PromptBuilder`::

    from dataclasses import dataclass
    from pipehost_plugin import PostProcessor, export_post_processor

    @dataclass
    class Config:
        suffix: str = ""

    class Shout(PostProcessor):
        Config = Config
        def process(self, text, ctx, config):
            return text.upper() + config.suffix

    export_post_processor(Shout)

The module must be called ``plugin.py`` (``scripts/build-plugins.sh`` builds it with
componentize-py into one ``.wasm`` component). Its logic is plain Python, so it is tested
natively with pytest; :mod:`pipehost_plugin.testing` checks the streaming contract.

Errors: raise :class:`InvalidConfig`, :class:`InvalidInput` or :class:`Internal`; any other
exception becomes ``internal`` with its type and message (the traceback goes to the host log).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from ._config import parse_config, prepare
from ._errors import Internal, InvalidConfig, InvalidInput, PluginError
from . import log

__all__ = [
    "ChunkOutput",
    "Context",
    "Internal",
    "InvalidConfig",
    "InvalidInput",
    "Message",
    "PluginError",
    "PostProcessor",
    "PromptBuilder",
    "Streamer",
    "export_post_processor",
    "export_prompt_builder",
    "log",
    "parse_config",
]


@dataclass
class Context:
    """Who is asking (mirrors the WIT ``context`` record). Never used for authorisation."""

    pipeline: str = ""
    request_id: str = ""
    stage: str = ""


@dataclass
class Message:
    """One chat message (mirrors the WIT ``message`` record)."""

    role: str
    content: str


@dataclass
class ChunkOutput:
    """What a streaming ``push`` hands back: final text, and whether to stop generating."""

    emit: str = ""
    stop: bool = False


class Streamer:
    """An incremental stream of one response. ``push`` returns the text that is final now
    (a ``str``, or a :class:`ChunkOutput` to set ``stop``); ``finish`` returns the rest."""

    def push(self, chunk: str) -> Union[str, ChunkOutput]:
        raise NotImplementedError

    def finish(self) -> str:
        raise NotImplementedError


class _Buffered(Streamer):
    """The default stream: buffers every chunk and runs ``process`` at ``finish``."""

    def __init__(self, plugin: "PostProcessor", config: Any, ctx: Context):
        self._plugin, self._config, self._ctx = plugin, config, ctx
        self._parts: list = []

    def push(self, chunk: str) -> str:
        self._parts.append(chunk)
        return ""

    def finish(self) -> str:
        return self._plugin.process("".join(self._parts), self._ctx, self._config)


class PostProcessor:
    """A post-processor: rewrites model output.

    ``Config`` is a dataclass describing the stage's JSON config (unknown fields are rejected,
    types are checked, errors name the field); leave it ``None`` to receive the parsed JSON
    object as a ``dict``.
    """

    Config: Optional[type] = None

    def check_config(self, config: Any) -> None:
        """Checks what the types cannot (ranges, consistency); raise :class:`InvalidConfig`."""

    def process(self, text: str, ctx: Context, config: Any) -> str:
        raise NotImplementedError

    def open(self, config: Any, ctx: Context) -> Streamer:
        """Opens a stream. The default buffers and calls ``process`` at ``finish``; override it
        for incremental output (for any chunking, the output must equal ``process(text)``)."""
        return _Buffered(self, config, ctx)

    def config(self, text: str) -> Any:
        """Parses and checks a JSON config (what the component does on every call)."""
        config = parse_config(text, self.Config)
        self.check_config(config)
        return config


class PromptBuilder:
    """A prompt builder: turns request variables into chat messages. ``vars`` is a list of
    (name, value) pairs; values are data, never template code."""

    Config: Optional[type] = None

    def check_config(self, config: Any) -> None:
        pass

    def build(self, vars: list, history: list, ctx: Context, config: Any) -> list:
        raise NotImplementedError

    def config(self, text: str) -> Any:
        config = parse_config(text, self.Config)
        self.check_config(config)
        return config


_exported: dict = {}


def export_post_processor(cls: type) -> type:
    """Makes ``cls`` (a :class:`PostProcessor` subclass) the component's post-processor."""
    if not (isinstance(cls, type) and issubclass(cls, PostProcessor)):
        raise TypeError("export_post_processor takes a PostProcessor subclass")
    _exported["post-processor"] = cls()
    # Registration runs at build time in a component: resolve the config's types into the
    # snapshot rather than on every call.
    prepare(cls.Config)
    return cls


def export_prompt_builder(cls: type) -> type:
    """Makes ``cls`` (a :class:`PromptBuilder` subclass) the component's prompt builder."""
    if not (isinstance(cls, type) and issubclass(cls, PromptBuilder)):
        raise TypeError("export_prompt_builder takes a PromptBuilder subclass")
    _exported["prompt-builder"] = cls()
    prepare(cls.Config)
    return cls


def exported(world: str) -> Any:
    """The registered plugin for ``world`` (used by the component glue)."""
    try:
        return _exported[world]
    except KeyError:
        raise RuntimeError(
            f"plugin.py registered no {world}: call export_post_processor(...) or "
            "export_prompt_builder(...) at the end of the module"
        ) from None
