#!/usr/bin/env python3
"""Appends a top-level custom section `pipehost-language` (payload: `python` or `javascript`)
to a component. The host reads it to pick the language's default limits (docs/plugins.md);
a component without it (what cargo builds) is taken to be Rust.

    scripts/stamp-language.py FILE.wasm python
"""
import sys

path, language = sys.argv[1], sys.argv[2]
name = b"pipehost-language"


def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


data = open(path, "rb").read()
if data[:4] != b"\0asm" or data[6:8] == b"\0\0":
    sys.exit(f"{path}: not a WebAssembly component")
body = leb(len(name)) + name + language.encode()
with open(path, "ab") as f:
    f.write(b"\0" + leb(len(body)) + body)
