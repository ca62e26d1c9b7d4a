#!/usr/bin/env bash
# Quantized weights on the CPU (docs/performance.md, "Quantized weights"): decode and prefill
# tokens/s and peak RSS of pipehost with f32, q8_0 and q4_k weights on a random
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
# and with our AVX2 and scalar kernels forced, GGUF=1 also runs the
# q4_k model from a GGUF file written by `pipehost quantize`, NO_BUILD=1 skips cargo build.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/bench-quant}
reference=${REFERENCE:-../shared/reference/tiny-qwen3}
root=${MODEL_ROOT:-/tmp/pipehost-bench-quant}
rounds=${ROUNDS:-3}
runs=${RUNS:-3}
shapes=${SHAPES:-qwen3-0.6b}
target=${CARGO_TARGET_DIR:-target}
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
    json=$(/usr/bin/time -v -o "$out/time.txt" "$P" bench model --device cpu --json \
      --prompt-tokens 32 --new-tokens 64 --runs "$runs" "$@" 2>"$out/stderr.txt")
    local kb
    kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$out/time.txt")
    json=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["peak_rss_mb"]=round(int(sys.argv[2])/1024); print(json.dumps(d))' "$json" "$kb")
  else
    json=$("$P" bench model --device cpu --json --prompt-tokens 32 --new-tokens 64 --runs "$runs" "$@" 2>"$out/stderr.txt")
  fi
  echo "{\"label\": \"$label\", \"result\": $json}" | tee -a "$out/results.jsonl"
}

: >"$out/results.jsonl"
{
  date -u +"%Y-%m-%d %H:%M UTC"
  echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
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
  if [ "${GGUF:-0}" = 1 ] && [ ! -f "$root/$shape-q4_k.gguf" ]; then
    "$P" quantize --model "$dir" --to q4_k --out "$root/$shape-q4_k.gguf"
  fi
  for round in $(seq "$rounds"); do
    echo "== $shape round $round" >&2
    # f32 is skipped for the 4B shape (16 GB of weights on a 24 GB machine).
    [ "$shape" = qwen3-4b ] || bench "$shape f32" --model "$dir" --dtype f32 --quantize none
    bench "$shape q8_0" --model "$dir" --quantize q8_0
    bench "$shape q4_k" --model "$dir" --quantize q4_k
    if [ "${GGUF:-0}" = 1 ]; then
      bench "$shape q4_k gguf" --model "$root/$shape-q4_k.gguf"
    fi
    if [ "${KERNELS:-0}" = 1 ]; then
      for k in candle avx2 scalar; do
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
print("| weights | decode tokens/s | vs f32 | prefill tokens/s | vs f32 | peak RSS MB | load s | rounds |")
print("|---|---|---|---|---|---|---|---|")
for label in rows:
    shape = label.split()[0]
    base = f"{shape} f32"
    d, p = med(label, "decode_tokens_per_s"), med(label, "prefill_tokens_per_s")
    vs = lambda v, k: f"{v / med(base, k):.2f}x" if base in rows else "-"
    print(f"| {label} | {d:.2f} | {vs(d, 'decode_tokens_per_s')} | {p:.1f} | {vs(p, 'prefill_tokens_per_s')} "
          f"| {med(label, 'peak_rss_mb'):.0f} | {med(label, 'load_s'):.1f} | {len(rows[label])} |")
EOF
