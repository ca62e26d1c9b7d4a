#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-quantize and llama-simple from source, for side-by-side
# figures (scripts/bench-quant.sh LLAMA=1) and for checking that llama.cpp loads the GGUF files
# `pipehost quantize` writes. Not part of CI.
#
# The source is the copy of llama.cpp vendored in the llama-cpp-python sdist on PyPI (the one
# registry this machine reaches), pinned below; it also brings convert_hf_to_gguf.py and the
# gguf-py package it needs. Everything lands under target/llamacpp/ (about 5 minutes of build on
# two cores); a second run does nothing.
#
#   scripts/llamacpp.sh        # prints the folder holding the binaries (build/bin)
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.3.36
root=${LLAMACPP_ROOT:-$PWD/target/llamacpp}
src=$root/llama_cpp_python-$version/vendor/llama.cpp
build=$src/build
mkdir -p "$root"

if [ ! -f "$src/CMakeLists.txt" ]; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        "llama-cpp-python==$version" -d "$root" >&2
    tar -xzf "$root/llama_cpp_python-$version.tar.gz" -C "$root"
fi
if ! command -v cmake >/dev/null; then
    echo "llamacpp.sh: cmake is needed (apt-get install cmake)" >&2
    exit 1
fi
if [ ! -f "$build/.pipehost-isa" ] || [ ! -x "$build/bin/llama-bench" ] || [ ! -x "$build/bin/llama-quantize" ] || [ ! -x "$build/bin/llama-simple" ]; then
    # llama.cpp's default is -march=native, but this kind of VM advertises AMX and faults on its
    # first AMX instruction (ldtilecfg: SIGSEGV in ggml_backend_amx_mul_mat), so the ISA is
    # named instead: the AVX-512 set (VNNI, BF16, VBMI) when the CPU has it, else AVX2+FMA.
    isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
    if grep -qw avx512_vnni /proc/cpuinfo; then
        isa+=(-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON)
    fi
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release "${isa[@]}" \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
    cmake --build "$build" -j "$(nproc)" --target llama-bench llama-quantize llama-simple >&2
    echo "${isa[*]}" >"$build/.pipehost-isa"
fi
echo "$build/bin"
