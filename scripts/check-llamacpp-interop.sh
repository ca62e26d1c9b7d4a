#!/usr/bin/env bash
# Does llama.cpp load and run the GGUF files `pipehost quantize` writes, and does it generate
# what pipehost generates from them? For each of q8_0 and q4_k: quantize MODEL_DIR, greedy-decode
# N tokens of a raw prompt with llama.cpp's llama-simple and with `pipehost generate`, and
# print both continuations and how much of them agrees; then dequantize tensors of the file
# with llama.cpp's own gguf-py reader (its reference implementation of the block formats) and
# compare them with the f32 checkpoint: a misread layout would show as an error near 100 %, not
# the format's few per cent. Not part of CI (builds llama.cpp with scripts/llamacpp.sh).
#
#   scripts/check-llamacpp-interop.sh MODEL_DIR [OUT_DIR]
#
# Environment: N (tokens, default 24), PROMPT, NO_BUILD=1 (skip cargo build), PYTHON (one with
# numpy and safetensors, default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: check-llamacpp-interop.sh MODEL_DIR [OUT_DIR]}
out=${2:-target/llamacpp-interop}
n=${N:-24}
prompt=${PROMPT:-"The history of the printing press is, in many ways, the history of"}
mkdir -p "$out"
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -p pipehost
P=${CARGO_TARGET_DIR:-target}/release/pipehost
bin=$(scripts/llamacpp.sh)
export RAYON_NUM_THREADS=2

for to in q8_0 q4_k; do
  gguf=$out/$(basename "$model")-$to.gguf
  [ -f "$gguf" ] || "$P" quantize --model "$model" --to "$to" --out "$gguf" >&2
  # llama-simple: greedy, no chat template; it prints the prompt then the continuation.
  "$bin/llama-simple" -m "$gguf" -n "$n" "$prompt" >"$out/llama-$to.txt" 2>"$out/llama-$to.log"
  "$P" generate --model "$gguf" --device cpu --raw --prompt "$prompt" --max-tokens "$n" \
    --temperature 0 --ignore-eos --json >"$out/pipehost-$to.json" 2>"$out/pipehost-$to.log"
  python3 - "$to" "$prompt" "$out/llama-$to.txt" "$out/pipehost-$to.json" <<'PY'
import json, sys
to, prompt, llama_path, ours_path = sys.argv[1:]
theirs = open(llama_path, encoding="utf-8", errors="replace").read()
theirs = theirs[theirs.find(prompt) + len(prompt):] if prompt in theirs else theirs
ours = json.load(open(ours_path))["text"]
common = 0
while common < min(len(ours), len(theirs)) and ours[common] == theirs[common]:
    common += 1
print(f"{to}: llama.cpp  {theirs!r}")
print(f"{to}: pipehost   {ours!r}")
print(f"{to}: the first {common} characters agree (of {len(ours)} / {len(theirs.rstrip())})")
PY

  PYTHONPATH=$(dirname "$(dirname "$bin")")/gguf-py ${PYTHON:-python3} - "$gguf" "$model/model.safetensors" <<'PY'
import sys, numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import load_file
gguf_path, st_path = sys.argv[1:]
w = load_file(st_path)
names = {"token_embd.weight": "model.embed_tokens.weight",
         "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
         "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight"}
for t in GGUFReader(gguf_path).tensors:
    if t.name in names:
        ref = w[names[t.name]].astype(np.float32)
        got = dequantize(t.data, t.tensor_type).reshape(ref.shape)
        rel = np.sqrt(((got - ref) ** 2).sum() / (ref ** 2).sum())
        print(f"{t.name} ({t.tensor_type.name}) read by gguf-py: relative RMS error vs f32 {rel:.4f}")
PY
done
