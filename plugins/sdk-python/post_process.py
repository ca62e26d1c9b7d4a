"""Component glue for the exported `streamer` resource (componentize-py looks for the class in
a module named after the interface). Plugin authors never import this."""

from wit_world.exports import post_process as wit_pp
from wit_world.imports import types as wit

import pipehost_plugin as sdk
from pipehost_app import checked_str, context, guard


class Streamer(wit_pp.Streamer):
    def __init__(self, inner):
        self._inner = inner

    @classmethod
    def open(cls, config: str, ctx) -> "Streamer":
        p = sdk.exported("post-processor")
        return cls(guard(lambda: p.open(p.config(config), context(ctx))))

    def push(self, chunk: str):
        def run():
            out = self._inner.push(chunk)
            if isinstance(out, sdk.ChunkOutput):
                return wit.ChunkOutput(emit=checked_str(out.emit, "push"), stop=bool(out.stop))
            return wit.ChunkOutput(emit=checked_str(out, "push"), stop=False)

        return guard(run)

    def finish(self) -> str:
        return guard(lambda: checked_str(self._inner.finish(), "finish"))
