#!/usr/bin/env bash
# Creates target/py/venv with the pinned Python plugin toolchain (componentize-py, pytest) from
# plugins/sdk-python/requirements.txt; does nothing when it is already there and current.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
venv="$target_dir/py/venv"
requirements=plugins/sdk-python/requirements.txt
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "installing the Python plugin toolchain into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" > "$venv/.requirements.sha256"
fi
