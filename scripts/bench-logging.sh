#!/usr/bin/env bash
# The request log's CPU cost per request (issue 11; docs/performance.md): `pipehost bench http
# --subjects full` with the log off (`--db none`) and on (SQLite, `--log-bodies full`, the
# default), alternating ROUNDS times so that the machine's noise hits both alike. Each run
# starts its own `serve --model echo` child (which reads PIPEHOST_DB). Prints every run's server
# CPU per request and the medians, per client count.
#
#   scripts/build-plugins.sh && cargo build --release -p pipehost
#   scripts/bench-logging.sh [OUT_DIR]          # ROUNDS=3 CLIENTS=1,16 DURATION=4
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/pipehost}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-1,16}
DURATION=${DURATION:-4}
OUT=${1:-target/bench-logging}
mkdir -p "$OUT"
for r in $(seq 1 "$ROUNDS"); do
    for mode in none full; do
        if [ "$mode" = none ]; then set_db=(env PIPEHOST_DB=none); else set_db=(env -u PIPEHOST_DB); fi
        "${set_db[@]}" "$BIN" bench http --subjects full --concurrency "$CLIENTS" \
            --duration "$DURATION" --rounds 2 > "$OUT/$mode-$r.md"
        echo "round $r, log $mode: done" >&2
    done
done
python3 - "$OUT" <<'PY'
import glob, os, statistics, sys
out = sys.argv[1]
cpu = {}  # (mode, clients) -> [µs]
for path in sorted(glob.glob(os.path.join(out, "*.md"))):
    mode = os.path.basename(path).split("-")[0]
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[1] == "full" and cells[0].isdigit():
            us = float(cells[-2].replace("µs", "").strip())
            cpu.setdefault((mode, int(cells[0])), []).append(us)
print("| clients | log | server CPU/req, each run | median | vs off |")
print("|---|---|---|---|---|")
for clients in sorted({c for _, c in cpu}):
    off = statistics.median(cpu[("none", clients)])
    for mode, label in (("none", "off (--db none)"), ("full", "on (SQLite, full bodies)")):
        runs = cpu[(mode, clients)]
        med = statistics.median(runs)
        print(f"| {clients} | {label} | {', '.join(f'{u:.0f} µs' for u in runs)} | {med:.0f} µs | {med / off - 1:+.1%} |")
PY
