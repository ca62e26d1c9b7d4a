"""Helpers for plugin tests (natively, with pytest)."""

from __future__ import annotations

from typing import Iterable, Tuple

from . import ChunkOutput, Context, PostProcessor


def chunks(text: str, sizes: Iterable[int]) -> list:
    """Splits ``text`` into chunks of the given sizes in characters, cycled."""
    sizes = [n for n in sizes if n > 0] or [len(text) or 1]
    out, i, k = [], 0, 0
    while i < len(text):
        n = sizes[k % len(sizes)]
        out.append(text[i : i + n])
        i, k = i + n, k + 1
    return out


def run_stream(plugin: PostProcessor, text: str, config_json: str = "{}", sizes=(1,)) -> Tuple[str, bool]:
    """Streams ``text`` through ``plugin`` in chunks; returns (output, whether stop was set).
    Stops feeding once ``stop`` is set, as the host does."""
    config = plugin.config(config_json)
    stream = plugin.open(config, Context())
    out, stopped = [], False
    for chunk in chunks(text, sizes):
        pushed = stream.push(chunk)
        if isinstance(pushed, ChunkOutput):
            out.append(pushed.emit)
            if pushed.stop:
                stopped = True
                break
        else:
            out.append(pushed)
    out.append(stream.finish())
    return "".join(out), stopped


def assert_stream_matches_whole(plugin: PostProcessor, text: str, config_json: str = "{}", sizes=(1,)) -> None:
    """The streaming contract: for this chunking, the stream's output equals ``process``."""
    whole = plugin.process(text, Context(), plugin.config(config_json))
    streamed, _ = run_stream(plugin, text, config_json, sizes)
    assert streamed == whole, f"stream != whole for chunks {list(sizes)} on {text!r}: {streamed!r} != {whole!r}"
