#!/usr/bin/env bash
# The test command: builds the WebAssembly plugins and test components, then runs every test
# in the workspace (plugin logic natively, the host runtime against the real components, the
# model engine against ../shared/reference when present).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p dedupe       # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

# Real parts some tests use, from Debian's packages, installed when missing and possible (root
# with apt-get); without them those tests say they skipped (CI makes that a failure): Chromium and
# chromedriver (the playground's browser test), PostgreSQL (the shared-store test).
missing=()
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || missing+=(chromium chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} for the browser and PostgreSQL tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scripts/build-plugins.sh
cargo test --workspace --no-fail-fast "$@"
