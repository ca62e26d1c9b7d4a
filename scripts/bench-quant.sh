#!/usr/bin/env bash
# Quantized weights on the CPU (docs/performance.md, "Quantized weights"): decode and prefill
# tokens/s and peak RSS of pipehost with f32, bf16, q8_0 and q4_k weights on a random
# Qwen3-0.6B-shape model (and the 4B shape with SHAPES="qwen3-0.6b qwen3-4b"), 32-token prompt,
# 64 new tokens, 2 threads. The engines run in alternating rounds so drift on a shared machine
# hits all of them alike; the table gives medians over rounds and ratios against the f32 run of
# the same rounds.
#
#   scripts/bench-quant.sh [OUT_DIR]
#
# Environment: REFERENCE (a Qwen3 tokenizer folder, default ../shared/reference/tiny-qwen3),
# MODEL_ROOT (where random model folders are written once, default /tmp/pipehost-bench-quant),
# ROUNDS (default 3), RUNS (runs per bench invocation, default 3), SHAPES (default qwen3-0.6b),
# KERNELS=1 also times q8_0/q4_k through candle's own QMatMul (PIPEHOST_QUANT_KERNEL=candle)
# and with our VNNI kernel on rows instead of tiles and our AVX2 and scalar kernels forced, GGUF=1 also runs the
# q4_k model from a GGUF file written by `pipehost quantize`, NO_BUILD=1 skips cargo build.
# LLAMA=1 also runs llama.cpp (built from source by scripts/llamacpp.sh) in the same rounds: on
# its own f32 / Q8_0 / Q4_K_M files made from the same weights with its convert_hf_to_gguf.py
# and llama-quantize, and on the q8_0 / q4_k files `pipehost quantize` writes (interoperability);
# LLAMA=ours runs it on pipehost's files only (no converter, so no Python with torch needed).
# AB=1 also runs the q4_k GGUF and bf16 with each step on the calling thread instead of a rayon
# worker (PIPEHOST_CPU_STEP=caller), and the q4_k GGUF on 4 KB pages (PIPEHOST_HUGE_PAGES=0)
# and with an f32 KV cache (PIPEHOST_KV_CACHE=f32). BASE=path/to/pipehost also runs another build (an earlier
# commit's) on the q4_k GGUF and bf16 in the same rounds. Every round starts with
# `pipehost bench memory` (the memory read bandwidth, decode's ceiling).
# PYTORCH=1 also runs ../shared/reference/bench/pytorch_decode.py in f32 and bf16. Both need a
# Python with torch, transformers, safetensors, numpy and sentencepiece: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/bench-quant}
reference=${REFERENCE:-../shared/reference/tiny-qwen3}
root=${MODEL_ROOT:-/tmp/pipehost-bench-quant}
rounds=${ROUNDS:-3}
runs=${RUNS:-3}
shapes=${SHAPES:-qwen3-0.6b}
target=${CARGO_TARGET_DIR:-target}
python=${PYTHON:-python3}
mkdir -p "$out" "$root"
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -p pipehost
P=$target/release/pipehost
export RAYON_NUM_THREADS=2

# One bench run: prints its JSON line with peak_rss_mb replaced by /usr/bin/time's maximum RSS
# (when available; the JSON's own figure is VmHWM read inside the process).
bench() { # label model-args...
  local label=$1; shift
  local json
  if [ -x /usr/bin/time ]; then
    json=$(/usr/bin/time -v -o "$out/time.txt" "${BIN:-$P}" bench model --device cpu --json \
      --prompt-tokens 32 --new-tokens 64 --runs "$runs" "$@" 2>"$out/stderr.txt")
    local kb
    kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$out/time.txt")
    json=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["peak_rss_mb"]=round(int(sys.argv[2])/1024); print(json.dumps(d))' "$json" "$kb")
  else
    json=$("${BIN:-$P}" bench model --device cpu --json --prompt-tokens 32 --new-tokens 64 --runs "$runs" "$@" 2>"$out/stderr.txt")
  fi
  echo "{\"label\": \"$label\", \"result\": $json}" | tee -a "$out/results.jsonl"
}

# llama-bench on one GGUF file (-p 32 -n 64, RUNS repetitions, 2 threads): the medians of its
# per-repetition tokens/s, in the keys of pipehost's JSON.
llama() { # label file
  local label=$1 file=$2
  /usr/bin/time -v -o "$out/time.txt" "$llama_bin/llama-bench" -m "$file" -t 2 -p 32 -n 64 \
    -r "$runs" -o jsonl >"$out/llama.jsonl" 2>"$out/stderr.txt"
  local kb
  kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$out/time.txt")
  python3 - "$label" "$out/llama.jsonl" "$kb" <<'PY' | tee -a "$out/results.jsonl"
import json, statistics, sys
label, path, kb = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = {"engine": "llama.cpp", "peak_rss_mb": round(kb / 1024), "load_s": None}
for line in open(path):
    t = json.loads(line)
    key = "prefill_tokens_per_s" if t["n_prompt"] else "decode_tokens_per_s"
    r[key] = statistics.median(t["samples_ts"])
    r["build"] = t.get("build_commit")
print(json.dumps({"label": label, "result": r}))
PY
}

# PyTorch (transformers) on the same folder.
pytorch() { # label dir dtype
  local json
  json=$(/usr/bin/time -v -o "$out/time.txt" "$python" ../shared/reference/bench/pytorch_decode.py \
    --model "$2" --dtype "$3" --threads 2 --prompt-tokens 32 --new-tokens 64 --runs "$runs" 2>"$out/stderr.txt")
  local kb
  kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$out/time.txt")
  json=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["peak_rss_mb"]=round(int(sys.argv[2])/1024); print(json.dumps(d))' "$json" "$kb")
  echo "{\"label\": \"$1\", \"result\": $json}" | tee -a "$out/results.jsonl"
}

if [ "${LLAMA:-0}" != 0 ]; then
  llama_bin=$(scripts/llamacpp.sh)
  llama_src=$(dirname "$(dirname "$llama_bin")")
fi

: >"$out/results.jsonl"
{
  date -u +"%Y-%m-%d %H:%M UTC"
  echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
  [ -z "${BASE:-}" ] || echo "base build: $BASE"
  grep -m1 "model name" /proc/cpuinfo || true
  uptime
} >"$out/machine.txt"

for shape in $shapes; do
  dir=$root/$shape
  if [ ! -f "$dir/model.safetensors" ]; then
    # The 4B shape in f32 would be 16 GB on disk: bf16 is written (widened to f32 at load).
    dtype=f32; [ "$shape" = qwen3-4b ] && dtype=bf16
    "$P" dev random-model --shape "$shape" --dtype "$dtype" --tokenizer "$reference" --out "$dir"
  fi
  if { [ "${GGUF:-0}" = 1 ] || [ -n "${BASE:-}" ]; } && [ ! -f "$root/$shape-q4_k.gguf" ]; then
    "$P" quantize --model "$dir" --to q4_k --out "$root/$shape-q4_k.gguf"
  fi
  if [ "${LLAMA:-0}" != 0 ]; then
    for to in q8_0 q4_k; do
      [ -f "$root/$shape-$to.gguf" ] || "$P" quantize --model "$dir" --to "$to" --out "$root/$shape-$to.gguf"
    done
    if [ "$LLAMA" = 1 ] && [ ! -f "$root/$shape-llama-Q4_K_M.gguf" ]; then
      # f32 (bf16 for 4B) as llama.cpp's converter writes it, then its own quantizer.
      ftype=f32; [ "$shape" = qwen3-4b ] && ftype=bf16
      PYTHONPATH=$llama_src/gguf-py "$python" "$llama_src/convert_hf_to_gguf.py" "$dir" \
        --outtype "$ftype" --outfile "$root/$shape-llama-$ftype.gguf" >&2
      "$llama_bin/llama-quantize" "$root/$shape-llama-$ftype.gguf" "$root/$shape-llama-Q8_0.gguf" Q8_0 >&2
      "$llama_bin/llama-quantize" "$root/$shape-llama-$ftype.gguf" "$root/$shape-llama-Q4_K_M.gguf" Q4_K_M >&2
    fi
  fi
  for round in $(seq "$rounds"); do
    echo "== $shape round $round" >&2
    # Decode's ceiling, in the same rounds: a streaming read of a 2 GiB buffer on 2 threads.
    echo "{\"label\": \"memory read\", \"result\": $("$P" bench memory --json --runs 3 2>/dev/null)}" \
      | tee -a "$out/results.jsonl"
    # f32 is skipped for the 4B shape (16 GB of weights on a 24 GB machine).
    [ "$shape" = qwen3-4b ] || bench "$shape f32" --model "$dir" --dtype f32 --quantize none
    bench "$shape bf16" --model "$dir" --dtype bf16 --quantize none
    bench "$shape q8_0" --model "$dir" --quantize q8_0
    bench "$shape q4_k" --model "$dir" --quantize q4_k
    if [ "${GGUF:-0}" = 1 ]; then
      bench "$shape q4_k gguf" --model "$root/$shape-q4_k.gguf"
    fi
    if [ "${LLAMA:-0}" != 0 ]; then
      if [ "$LLAMA" = 1 ]; then
        [ "$shape" = qwen3-4b ] || llama "$shape llama.cpp f32" "$root/$shape-llama-f32.gguf"
        llama "$shape llama.cpp Q8_0" "$root/$shape-llama-Q8_0.gguf"
        llama "$shape llama.cpp Q4_K_M" "$root/$shape-llama-Q4_K_M.gguf"
      fi
      llama "$shape llama.cpp on pipehost's q8_0 gguf" "$root/$shape-q8_0.gguf"
      llama "$shape llama.cpp on pipehost's q4_k gguf" "$root/$shape-q4_k.gguf"
    fi
    if [ "${PYTORCH:-0}" = 1 ]; then
      [ "$shape" = qwen3-4b ] || pytorch "$shape PyTorch f32" "$dir" f32
      pytorch "$shape PyTorch bf16" "$dir" bf16
    fi
    if [ "${AB:-0}" = 1 ]; then
      # What this stop changed that has a switch, switched back in the same rounds.
      PIPEHOST_CPU_STEP=caller bench "$shape q4_k gguf, step on the caller" --model "$root/$shape-q4_k.gguf"
      PIPEHOST_HUGE_PAGES=0 bench "$shape q4_k gguf, 4 KB pages" --model "$root/$shape-q4_k.gguf"
      PIPEHOST_KV_CACHE=f32 bench "$shape q4_k gguf, f32 KV cache" --model "$root/$shape-q4_k.gguf"
      PIPEHOST_CPU_STEP=caller bench "$shape bf16, step on the caller" --model "$dir" --dtype bf16 --quantize none
    fi
    if [ -n "${BASE:-}" ]; then
      BIN=$BASE bench "$shape q4_k gguf, base build" --model "$root/$shape-q4_k.gguf"
      BIN=$BASE bench "$shape bf16, base build" --model "$dir" --dtype bf16 --quantize none
    fi
    if [ "${KERNELS:-0}" = 1 ]; then
      for k in candle vnni-rows avx2 scalar; do
        PIPEHOST_QUANT_KERNEL=$k bench "$shape q8_0 $k" --model "$dir" --quantize q8_0
        PIPEHOST_QUANT_KERNEL=$k bench "$shape q4_k $k" --model "$dir" --quantize q4_k
      done
    fi
  done
done

# Medians over rounds, ratios against f32 of the same shape.
python3 - "$out/results.jsonl" <<'EOF' | tee "$out/table.md"
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["label"], []).append(r["result"])
def med(label, key):
    return statistics.median(x[key] for x in rows[label])
memory = [x["read_gb_per_s"] for x in rows.pop("memory read", [])]
if memory:
    print(f"memory read bandwidth, 2 threads: {statistics.median(memory):.1f} GB/s "
          f"(median over {len(memory)} rounds: {', '.join(f'{m:.1f}' for m in memory)})\n")
print("| engine, weights | decode tokens/s | vs f32 | prefill tokens/s | vs f32 | peak RSS MB | load s | rounds |")
print("|---|---|---|---|---|---|---|---|")
for label in rows:
    shape = label.split()[0]
    base = f"{shape} f32"
    d, p = med(label, "decode_tokens_per_s"), med(label, "prefill_tokens_per_s")
    vs = lambda v, k: f"{v / med(base, k):.2f}x" if base in rows else "-"
    load = "-" if rows[label][0].get("load_s") is None else f"{med(label, 'load_s'):.1f}"
    print(f"| {label} | {d:.2f} | {vs(d, 'decode_tokens_per_s')} | {p:.1f} | {vs(p, 'prefill_tokens_per_s')} "
          f"| {med(label, 'peak_rss_mb'):.0f} | {load} | {len(rows[label])} |")
EOF
