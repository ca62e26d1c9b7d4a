"""Test component: the Python counterpart of tests/guests/evil, a post-processor that misbehaves
as its config says; tests/plugin_sandbox_py.rs drives it through the host. Never shipped.

Config: {"mode": MODE, "in": "process" | "push", ...}. Modes: ok (echo), loop, alloc (`bytes`:
one bytearray), grow (appends 1 MiB blocks forever), output (`bytes` of "x"), amplify
(`factor`), read-file (`path`), env, tcp (`addr`), dns (`host`), stdout, log, invalid-input,
raise (an uncaught ValueError), sleep (`ms`, time.sleep), stop (a stream push sets stop).
"""

import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Optional

from pipehost_plugin import ChunkOutput, InvalidInput, PostProcessor, Streamer, export_post_processor, log


@dataclass
class Config:
    mode: str = "ok"
    # "in" is a Python keyword: the field is `at`, read from "in" below.
    at: str = "process"
    bytes: Optional[int] = None
    factor: Optional[int] = None
    ms: Optional[int] = None
    path: Optional[str] = None
    addr: Optional[str] = None
    host: Optional[str] = None


def run(c: Config, text: str) -> str:
    mode = c.mode
    if mode in ("ok", "stop"):
        return text
    if mode == "loop":
        i = 0
        while True:
            i += 1
    if mode == "alloc":
        block = bytearray(c.bytes)
        return text + ("" if block[-1:] == b"\1" else "")
    if mode == "grow":
        blocks = []
        while True:
            blocks.append(bytearray(1 << 20))
    if mode == "output":
        return "x" * c.bytes
    if mode == "amplify":
        return text * c.factor
    if mode == "read-file":
        try:
            with open(c.path) as f:
                return f"read ok: {len(f.read())} bytes"
        except OSError as e:
            raise RuntimeError(f"read failed: {e}") from None
    if mode == "env":
        return f"vars: {len(os.environ)}, args: {len(sys.argv)}"
    if mode == "tcp":
        host, port = c.addr.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1)
            return "tcp ok"
        except Exception as e:
            raise RuntimeError(f"tcp failed: {type(e).__name__}: {e}") from None
    if mode == "dns":
        try:
            return f"dns ok: {len(socket.getaddrinfo(c.host, 80))} addresses"
        except Exception as e:
            raise RuntimeError(f"dns failed: {type(e).__name__}: {e}") from None
    if mode == "stdout":
        print(f"to stdout: {text}")
        print(f"to stderr: {text}", file=sys.stderr)
        return text
    if mode == "log":
        for level in (log.trace, log.debug, log.info, log.warn, log.error):
            level(f"evil-py log {level.__name__}")
        return text
    if mode == "invalid-input":
        raise InvalidInput("evil-py: invalid input requested")
    if mode == "raise":
        raise ValueError("evil-py: exception requested")
    if mode == "sleep":
        time.sleep(c.ms / 1000)
        return text
    raise InvalidInput(f"unknown mode {mode}")


class Stream(Streamer):
    def __init__(self, c: Config):
        self.c, self.parts = c, []

    def push(self, chunk):
        if self.c.at == "push":
            out = run(self.c, chunk)
            return ChunkOutput(out, stop=self.c.mode == "stop")
        self.parts.append(chunk)
        return ""

    def finish(self):
        return "" if self.c.at == "push" else run(self.c, "".join(self.parts))


class EvilPy(PostProcessor):
    Config = None  # a dict: "in" is not a valid dataclass field name

    def config(self, text):
        raw = super().config(text)
        raw["at"] = raw.pop("in", "process")
        from pipehost_plugin import parse_config
        import json

        return parse_config(json.dumps(raw), Config)

    def process(self, text, ctx, c):
        return run(c, text) if c.at == "process" else text

    def open(self, c, ctx):
        return Stream(c)


export_post_processor(EvilPy)
