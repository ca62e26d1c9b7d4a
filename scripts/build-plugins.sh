#!/usr/bin/env bash
# Builds every plugin (plugins/*) and test component (tests/guests/*) for wasm32-wasip2 and
# puts the shipped plugins in plugins/dist/NAME.wasm, the folder `--plugins` defaults to.
#
#   scripts/build-plugins.sh            # all of them
#   scripts/build-plugins.sh dedupe     # just these
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

# Every workspace package with a cdylib target under plugins/ or tests/guests/.
mapfile -t packages < <(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys, os
meta = json.load(sys.stdin)
root = meta["workspace_root"]
for p in meta["packages"]:
    rel = os.path.relpath(os.path.dirname(p["manifest_path"]), root)
    if rel.startswith(("plugins/", "tests/guests/")) and any("cdylib" in t["crate_types"] for t in p["targets"]):
        print(p["name"], rel)
')

wanted=("$@")
args=()
shipped=()
for line in "${packages[@]}"; do
    name=${line%% *}
    dir=${line#* }
    if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then
        continue
    fi
    args+=(-p "$name")
    [[ $dir == plugins/* ]] && shipped+=("$name")
done
[ ${#args[@]} -gt 0 ] || { echo "no plugin packages matched: $*" >&2; exit 1; }

cargo build --target wasm32-wasip2 --profile plugin "${args[@]}"

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
mkdir -p plugins/dist
for name in "${shipped[@]}"; do
    cp "$target_dir/wasm32-wasip2/plugin/${name//-/_}.wasm" "plugins/dist/$name.wasm"
done
echo "built: ${shipped[*]:-(no shipped plugins)} -> plugins/dist/; test components in $target_dir/wasm32-wasip2/plugin/"
