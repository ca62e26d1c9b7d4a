#!/usr/bin/env bash
# Builds every plugin (plugins/*) and test component (tests/guests/*) and puts the shipped
# plugins in plugins/dist/NAME.wasm, the folder `--plugins` defaults to; test components (and
# a copy of each shipped one) go to target/wasm32-wasip2/plugin/, where the tests look.
#
# Rust plugins are cargo packages (a cdylib built for wasm32-wasip2). Python plugins are
# folders with a pyproject.toml holding `[tool.pipehost]` and a plugin.py, built with the
# componentize-py pinned in plugins/sdk-python/requirements.txt, which this script installs
# into a venv under target/py/ (PyPI access needed once). JavaScript plugins are folders with a
# package.json holding "pipehost": {"world": ...} and a plugin.js, built with the
# componentize-qjs (QuickJS) locked in plugins/sdk-js/package-lock.json (`npm ci`).
#
#   scripts/build-plugins.sh            # all of them
#   scripts/build-plugins.sh dedupe     # just these
#   scripts/build-plugins.sh ~/shout    # a Python or JS plugin folder anywhere -> ~/shout/shout.wasm
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

# Python plugins and test components: folders with a pyproject.toml that has [tool.pipehost].
py_dirs=()
path_args=()
for arg in "$@"; do
    [[ $arg == */* && -d $arg ]] && path_args+=("${arg%/}")
done
for manifest in plugins/*/pyproject.toml tests/guests/*/pyproject.toml "${path_args[@]/%//pyproject.toml}"; do
    [ -f "$manifest" ] && grep -q '^\[tool\.pipehost\]' "$manifest" || continue
    dir=$(dirname "$manifest")
    name=$(basename "$dir")
    if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]] && [[ ! " ${wanted[*]} " == *" $dir "* ]] && [[ ! " ${wanted[*]} " == *" $dir/ "* ]]; then
        continue
    fi
    py_dirs+=("$dir")
done
# JavaScript plugins and test components: folders with a package.json that has "pipehost".
js_dirs=()
for manifest in plugins/*/package.json tests/guests/*/package.json "${path_args[@]/%//package.json}"; do
    [ -f "$manifest" ] && grep -q '"pipehost"' "$manifest" || continue
    dir=$(dirname "$manifest")
    name=$(basename "$dir")
    if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]] && [[ ! " ${wanted[*]} " == *" $dir "* ]] && [[ ! " ${wanted[*]} " == *" $dir/ "* ]]; then
        continue
    fi
    js_dirs+=("$dir")
done
[ ${#args[@]} -gt 0 ] || [ ${#py_dirs[@]} -gt 0 ] || [ ${#js_dirs[@]} -gt 0 ] || { echo "no plugin packages matched: $*" >&2; exit 1; }

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
out_dir="$target_dir/wasm32-wasip2/plugin"
mkdir -p plugins/dist "$out_dir"

if [ ${#args[@]} -gt 0 ]; then
    cargo build --target wasm32-wasip2 --profile plugin "${args[@]}"
    for name in "${shipped[@]}"; do
        cp "$out_dir/${name//-/_}.wasm" "plugins/dist/$name.wasm"
    done
fi

if [ ${#py_dirs[@]} -gt 0 ]; then
    scripts/python-env.sh
    venv="$target_dir/py/venv"
    for dir in "${py_dirs[@]}"; do
        name=$(basename "$dir")
        world=$(sed -n 's/^world *= *"\(.*\)"/\1/p' "$dir/pyproject.toml" | head -n1)
        case "$world" in
            post-processor | prompt-builder) ;;
            *) echo "$dir/pyproject.toml: [tool.pipehost] world must be \"post-processor\" or \"prompt-builder\", got \"$world\"" >&2; exit 1 ;;
        esac
        wasm="$out_dir/${name//-/_}.wasm"
        [[ $dir == plugins/* || $dir == tests/guests/* ]] || wasm="$dir/$name.wasm"
        # componentize-py takes ~15 s of CPU per component: rebuild only when an input changed.
        stamp=$( { find "$dir" plugins/sdk-python wit -type f -not -name '*.wasm*' -not -path '*/__pycache__/*' -not -path '*/.pytest_cache/*' -print0 | sort -z | xargs -0 sha256sum; echo "$world"; } | sha256sum | cut -d' ' -f1)
        if [ -f "$wasm" ] && [ "$(cat "$wasm.stamp" 2>/dev/null)" = "$stamp" ]; then
            echo "$name: up to date"
        else
            echo "$name: componentize-py ($world)"
            "$venv/bin/componentize-py" -d wit -w "$world" componentize pipehost_app \
                -p "$dir" -p plugins/sdk-python -o "$wasm.tmp" 2>&1 | grep -v '^Component built successfully' || true
            [ -f "$wasm.tmp" ] || { echo "$name: componentize-py failed" >&2; exit 1; }
            python3 scripts/stamp-language.py "$wasm.tmp" python
            mv "$wasm.tmp" "$wasm"
            echo "$stamp" > "$wasm.stamp"
        fi
        if [[ $dir == plugins/* ]]; then
            cp "$wasm" "plugins/dist/$name.wasm"
            shipped+=("$name")
        fi
    done
fi
if [ ${#js_dirs[@]} -gt 0 ]; then
    lock_sum=$(sha256sum plugins/sdk-js/package-lock.json | cut -d' ' -f1)
    if [ "$(cat plugins/sdk-js/node_modules/.lock.sha256 2>/dev/null)" != "$lock_sum" ]; then
        echo "installing the JavaScript plugin toolchain (npm ci in plugins/sdk-js)"
        (cd plugins/sdk-js && npm ci --no-audit --no-fund --loglevel=error)
        echo "$lock_sum" > plugins/sdk-js/node_modules/.lock.sha256
    fi
    for dir in "${js_dirs[@]}"; do
        name=$(basename "$dir")
        world=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("pipehost", {}).get("world", ""))' "$dir/package.json")
        case "$world" in
            post-processor) export_name=postProcess ;;
            prompt-builder) export_name=promptBuild ;;
            *) echo "$dir/package.json: \"pipehost\": {\"world\"} must be \"post-processor\" or \"prompt-builder\", got \"$world\"" >&2; exit 1 ;;
        esac
        wasm="$out_dir/${name//-/_}.wasm"
        [[ $dir == plugins/* || $dir == tests/guests/* ]] || wasm="$dir/$name.wasm"
        stamp=$( { find "$dir" plugins/sdk-js/*.js plugins/sdk-js/package-lock.json wit -type f -not -name '*.wasm*' -not -path '*/node_modules/*' -print0 | sort -z | xargs -0 sha256sum; echo "$world"; } | sha256sum | cut -d' ' -f1)
        if [ -f "$wasm" ] && [ "$(cat "$wasm.stamp" 2>/dev/null)" = "$stamp" ]; then
            echo "$name: up to date"
        else
            echo "$name: componentize-qjs ($world)"
            # The entry module: the glue's export for the world (first, so `console` exists when
            # plugin.js runs), then the author's plugin.js, which registers itself. (The module
            # root is only read while the component is built.)
            entry_dir="$target_dir/js/$(echo "$dir" | sha256sum | cut -c1-8)-$name"
            mkdir -p "$entry_dir"
            rel() { python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$1" "$entry_dir"; }
            {
                echo "export { $export_name } from \"$(rel plugins/sdk-js/glue.js)\";"
                echo "import \"$(rel "$dir/plugin.js")\";"
            } > "$entry_dir/entry.js"
            plugins/sdk-js/node_modules/.bin/componentize-qjs --sync --wit wit --world "$world" \
                --js "$entry_dir/entry.js" --module-root / -o "$wasm.tmp"
            python3 scripts/stamp-language.py "$wasm.tmp" javascript
            mv "$wasm.tmp" "$wasm"
            echo "$stamp" > "$wasm.stamp"
        fi
        if [[ $dir == plugins/* ]]; then
            cp "$wasm" "plugins/dist/$name.wasm"
            shipped+=("$name")
        fi
    done
fi
echo "built: ${shipped[*]:-(no shipped plugins)} -> plugins/dist/; test components in $out_dir/"
