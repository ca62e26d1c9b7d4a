#!/usr/bin/env bash
# The test command: builds the WebAssembly plugins and test components, then runs every test
# in the workspace (plugin logic natively, the host runtime against the real components, the
# model engine against ../shared/reference when present).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p dedupe       # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-plugins.sh
cargo test --workspace --no-fail-fast "$@"
