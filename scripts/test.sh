#!/usr/bin/env bash
# The test command: builds the WebAssembly plugins and test components, then runs every test
# in the workspace (plugin logic natively, the host runtime against the real components, the
# model engine against ../shared/reference when present).
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p dedupe       # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."

# The playground's browser test drives Debian's Chromium through chromedriver; install them when
# missing and possible (root with apt-get), else that test says it skipped.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver for the playground's browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
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
