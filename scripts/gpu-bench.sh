#!/usr/bin/env bash
# Qwen3-4B decode speed on a GPU machine (issue 6, table "Qwen3-4B on an NVIDIA H200"), with
# random weights of the real shape so that nothing is downloaded. Needs only a pipehost binary
# built with `--features cuda` (see docs/performance.md: built elsewhere, then carried over) and
# the CUDA 13 libraries; finishes within 10 minutes on an H200.
#
#   scripts/gpu-bench.sh PIPEHOST_BINARY OUT_DIR [TOKENIZER_DIR]
#
# Writes OUT_DIR/{nvidia-smi.txt, short.json, long.json, summary.md, *.log}:
#   short: 128-token prompt, 256 new tokens, single stream (time to first token = prefill_ms);
#   long:  the same at a 4K-token prompt;
#   batch: 1, 8 and 32 concurrent greedy streams through the batching engine (aggregate and
#          per-stream decode tokens/s; time to first token with a cached system prompt).
# TOKENIZER_DIR: any folder with the Qwen3 tokenizer.json (default: the reference model in
# ../shared/reference/tiny-qwen3 or shared/reference/tiny-qwen3).
# For a dry run on a CPU build: SHAPE=qwen3-0.6b DEVICE=cpu DTYPE=f32 NEW=8 LONG=256 RUNS=1.
set -euo pipefail

bin=${1:?usage: scripts/gpu-bench.sh PIPEHOST_BINARY OUT_DIR [TOKENIZER_DIR]}
out=${2:?usage: scripts/gpu-bench.sh PIPEHOST_BINARY OUT_DIR [TOKENIZER_DIR]}
tok=${3:-}
shape=${SHAPE:-qwen3-4b}
device=${DEVICE:-cuda}
dtype=${DTYPE:-bf16}
prompt=${PROMPT:-128}
new=${NEW:-256}
long=${LONG:-4096}
runs=${RUNS:-3}

root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$tok" ]; then
  for d in "$root/../shared/reference/tiny-qwen3" "$root/shared/reference/tiny-qwen3"; do
    [ -f "$d/tokenizer.json" ] && tok=$d && break
  done
fi
[ -n "$tok" ] && [ -f "$tok/tokenizer.json" ] || { echo "no tokenizer.json found; pass TOKENIZER_DIR" >&2; exit 2; }
[ -x "$bin" ] || { echo "$bin is not an executable" >&2; exit 2; }
mkdir -p "$out"

# The binary links libcublas/libcurand/libcudart 13 dynamically (libcuda comes with the driver).
# A torch cu130 install carries them: use its folder unless the loader already finds them.
if [ "$device" != cpu ] && ! ldconfig -p 2>/dev/null | grep -q 'libcublas.so.13'; then
  site=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
  if [ -n "$site" ] && [ -d "$site/nvidia/cu13/lib" ]; then
    export LD_LIBRARY_PATH="$site/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi
if missing=$(ldd "$bin" | grep 'not found'); then
  echo "$bin cannot find: $missing (set LD_LIBRARY_PATH to the CUDA 13 libraries)" >&2
  exit 2
fi
{ nvidia-smi -q 2>/dev/null || echo "no nvidia-smi"; } >"$out/nvidia-smi.txt"

# The weights (8 GB for the 4B shape in bf16) stay out of OUT_DIR, which may be copied back.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
timeout 300 "$bin" dev random-model --shape "$shape" --dtype "$dtype" --tokenizer "$tok" \
  --out "$work/model" 2>"$out/random-model.log"
echo "random model written in $(($(date +%s) - started)) s" | tee -a "$out/random-model.log"

bench() { # name prompt-tokens
  timeout 240 "$bin" bench model --model "$work/model" --device "$device" --dtype "$dtype" \
    --prompt-tokens "$2" --new-tokens "$new" --runs "$runs" --json >"$out/$1.json" 2>"$out/$1.log"
  cat "$out/$1.json"
}
bench short "$prompt"
bench long "$long"
timeout 300 "$bin" bench model --model "$work/model" --device "$device" --dtype "$dtype" \
  --prompt-tokens "$prompt" --new-tokens "$new" --runs "$runs" --concurrency "${LEVELS:-1,8,32}" --json \
  >"$out/batch.json" 2>"$out/batch.log"
cat "$out/batch.json"

python3 - "$out" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for name in ("short", "long"):
    r = json.loads((out / f"{name}.json").read_text())
    rows.append(f"| {r['prompt_tokens']} | {r['new_tokens']} | {r['prefill_ms']:.1f} ms "
                f"| {r['decode_tokens_per_s']:.1f} | {r['decode_ms_per_token']:.2f} ms | {r['load_s']:.1f} s |")
gpu = next((l.split(":", 1)[1].strip() for l in (out / "nvidia-smi.txt").read_text().splitlines()
            if "Product Name" in l), "no GPU")
first = json.loads((out / "short.json").read_text())
text = (f"{first['model']}, {first['dtype']} on {first['device']} ({gpu}), {first['engine']}, "
        f"median of {first['runs']} runs after a warm-up\n\n"
        "| prompt tokens | new tokens | time to first token | decode tokens/s | per token | load |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
b = json.loads((out / "batch.json").read_text())
text += ("\n| streams | aggregate decode tokens/s | per stream | vs 1 stream | time to first token |\n"
         "|---|---|---|---|---|\n" + "\n".join(
             f"| {l['concurrency']} | {l['aggregate_tokens_per_s']:.1f} | {l['per_stream_tokens_per_s']:.1f} "
             f"| {l['vs_one_stream']}x | {l['ttft_ms']:.1f} ms |" for l in b["levels"]) + "\n")
pc = b["prefix_cache"]
text += (f"\nPrefix cache: {pc['cached_tokens']} of {pc['prompt_tokens']} prompt tokens cached; time to first "
         f"token {pc['ttft_cold_ms']:.1f} ms computed vs {pc['ttft_cached_ms']:.1f} ms cached.\n")
(out / "summary.md").write_text(text)
print(text)
EOF
