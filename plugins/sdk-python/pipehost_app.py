"""Component glue (componentize-py's app module): maps the WIT exports onto the SDK classes.
Plugin authors never import this; ``scripts/build-plugins.sh`` names it as the entry point.

componentize-py runs this module's top level at build time and snapshots the result, so
``plugin`` (the author's module) and everything it imports is loaded once, at build time; each
call then starts from that snapshot in a fresh instance.
"""

import sys
import traceback

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types as wit

import pipehost_plugin as sdk
import plugin  # noqa: F401  (the author's module registers itself)


def to_wit_error(e: BaseException):
    """SDK errors keep their kind; anything else is `internal` with its type and message."""
    if isinstance(e, sdk.InvalidConfig):
        return wit.PluginError_InvalidConfig(e.message)
    if isinstance(e, sdk.InvalidInput):
        return wit.PluginError_InvalidInput(e.message)
    if isinstance(e, sdk.Internal):
        return wit.PluginError_Internal(e.message)
    traceback.print_exception(e, file=sys.stderr)
    return wit.PluginError_Internal(f"{type(e).__name__}: {e}")


def guard(f, *args):
    try:
        return f(*args)
    except Err:
        raise
    except MemoryError:
        # Let the host report the memory cap it enforced, not a Python exception.
        raise
    except Exception as e:
        raise Err(to_wit_error(e)) from None


def context(c) -> sdk.Context:
    return sdk.Context(pipeline=c.pipeline, request_id=c.request_id, stage=c.stage)


def checked_str(value, what: str) -> str:
    if not isinstance(value, str):
        raise sdk.Internal(f"{what} returned {type(value).__name__}, expected str")
    return value


if hasattr(exports, "PostProcess"):

    class PostProcess(exports.PostProcess):
        def validate_config(self, config: str) -> None:
            p = sdk.exported("post-processor")
            guard(p.config, config)

        def process(self, text: str, ctx, config: str) -> str:
            p = sdk.exported("post-processor")

            def run():
                return checked_str(p.process(text, context(ctx), p.config(config)), "process")

            return guard(run)


if hasattr(exports, "PromptBuild"):

    class PromptBuild(exports.PromptBuild):
        def validate_config(self, config: str) -> None:
            b = sdk.exported("prompt-builder")
            guard(b.config, config)

        def build(self, vars, history, ctx, config: str):
            b = sdk.exported("prompt-builder")

            def run():
                hist = [sdk.Message(m.role, m.content) for m in history]
                out = b.build([tuple(v) for v in vars], hist, context(ctx), b.config(config))
                result = []
                for m in out:
                    if not isinstance(m, sdk.Message):
                        raise sdk.Internal(f"build returned {type(m).__name__}, expected Message")
                    result.append(wit.Message(role=m.role, content=m.content))
                return result

            return guard(run)
