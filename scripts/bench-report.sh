#!/usr/bin/env bash
# Runs every benchmark behind docs/performance.md in one go and writes the raw results (markdown
# tables, JSON) to OUT_DIR (default target/bench-report), one file per table, plus machine.txt.
# About 20 minutes on a 2-core machine. Run it on a machine as quiet as you can get: the tables
# carry ratios against baselines measured in the same run, but absolute times still move with load.
#
#   scripts/bench-report.sh [OUT_DIR]
#
# Model rows need a Qwen3 tokenizer folder (REFERENCE, default ../shared/reference/tiny-qwen3);
# the Qwen3-0.6B-shape random model (2.4 GB) is written once to MODEL_DIR (default
# /tmp/qwen3-0.6b-random). PyTorch rows run when PYTHON (default /work/venv-bench/bin/python) can
# import torch and transformers (python3 -m venv DIR && DIR/bin/pip install torch transformers).
# SKIP_MODEL=1 skips the model rows.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-target/bench-report}
reference=${REFERENCE:-../shared/reference/tiny-qwen3}
model_dir=${MODEL_DIR:-/tmp/qwen3-0.6b-random}
python=${PYTHON:-/work/venv-bench/bin/python}
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$out"

scripts/build-plugins.sh >/dev/null
cargo build --release -p pipehost
P=$target/release/pipehost

{
  date -u +"%Y-%m-%d %H:%M UTC"
  echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with local changes)')"
  echo "$(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"

step() { # name, command...
  local name=$1
  shift
  echo "== $name: $*" >&2
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)" >"$out/$name.log"
  "$@" >"$out/$name.md" 2>>"$out/$name.log"
}

# 1. Plugin calls, WASM vs native.
step plugins cargo bench -p pipehost --bench plugins
# 2. The host over HTTP (echo backend), whole and streamed.
step http "$P" bench http
step http-stream "$P" bench http --stream
# 3. Streaming: the chain's cost per delta.
step streaming cargo bench -p pipehost --bench streaming
# 4. Hot reload.
step reload "$P" bench reload --reps 10
# Issue 5's load figures: 64 streaming clients; reload under load.
step load-echo "$P" bench http --stream --concurrency 64 --subjects full --duration 30 --rounds 1
step load-tiny "$P" bench http --stream --concurrency 64 --subjects full --duration 30 --rounds 1 \
  --model "$reference"
step reload-under-load "$P" bench http --reload-swaps 50 --concurrency 16

# 5. The model on the CPU, side by side with PyTorch.
if [ -z "${SKIP_MODEL:-}" ]; then
  if [ ! -f "$model_dir/model.safetensors" ]; then
    "$P" dev random-model --shape qwen3-0.6b --dtype f32 --tokenizer "$reference" --out "$model_dir"
  fi
  bench_model() { # name, args...
    local name=$1
    shift
    echo "== $name" >&2
    "$P" bench model --device cpu --json "$@" >"$out/$name.json" 2>"$out/$name.log"
  }
  bench_model model-candle-f32 --model "$model_dir" --dtype f32
  bench_model model-candle-bf16 --model "$model_dir" --dtype bf16 --new-tokens 16 --runs 1
  bench_model model-candle-f16 --model "$model_dir" --dtype f16 --new-tokens 16 --runs 1
  bench_model model-tiny --model "$reference" --dtype f32 --new-tokens 64 --runs 5
  if "$python" -c 'import torch, transformers' 2>/dev/null; then
    for dtype in f32 bf16; do
      echo "== model-pytorch-$dtype" >&2
      "$python" ../shared/reference/bench/pytorch_decode.py --model "$model_dir" --dtype $dtype \
        >"$out/model-pytorch-$dtype.json" 2>"$out/model-pytorch-$dtype.log"
    done
    # The second candle f32 run makes the pair candle, PyTorch, candle: drift shows.
    bench_model model-candle-f32-again --model "$model_dir" --dtype f32
  else
    echo "no torch/transformers for $python: PyTorch rows skipped" >&2
  fi
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"
echo "results in $out" >&2
