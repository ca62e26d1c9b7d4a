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

# Plugins in other languages: their logic natively (pytest from the venv build-plugins.sh made,
# node's test runner).
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
for manifest in plugins/*/pyproject.toml; do
    dir=$(dirname "$manifest")
    if grep -q '^\[tool\.pipehost\]' "$manifest" && [ -d "$dir/tests" ]; then
        echo "pytest: $dir"
        (cd "$dir" && "$target_dir/py/venv/bin/python" -m pytest -q -p no:cacheprovider)
    fi
done

for manifest in plugins/*/package.json; do
    dir=$(dirname "$manifest")
    if grep -q '"pipehost"' "$manifest" && [ -d "$dir/tests" ]; then
        echo "node --test: $dir"
        (cd "$dir" && node --test tests/)
    fi
done

cargo test --workspace --no-fail-fast "$@"
