#!/usr/bin/env bash
# Sets up what `cargo build --features cuda` needs on a machine with no CUDA install and no GPU,
# from NVIDIA's CUDA 13.0 packages on PyPI: nvcc (candle-kernels compiles its .cu files with it)
# and the libraries cudarc links against. CUDA 13.0 so that the PTX is accepted by driver 580.
#
#   scripts/cuda-toolchain.sh DIR      # then, as it prints:
#   CUDA_ROOT=DIR PATH=DIR/bin:$PATH CUDA_COMPUTE_CAP=90 cargo build --release --features cuda
#
# DIR ends up with bin/ include/ lib/ nvvm/ (about 1.2 GB). lib/stubs/libcuda.so is a link-time
# stub generated here (libcuda belongs to the GPU driver and no wheel ships it): never ship or
# load it; the GPU machine's driver provides the real one.
set -euo pipefail

dir=${1:?usage: scripts/cuda-toolchain.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cd "$(dirname "$0")/.."

wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-curand==10.4.0.35 nvidia-cublas==13.0.0.19
)
if [ ! -x "$dir/bin/nvcc" ]; then
  # Linux x86_64 wheels; --no-deps: the metapackages' dependencies are not needed to compile.
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dir/wheels" "${wheels[@]}"
  unpacked=$(mktemp -d)
  for w in "$dir"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$unpacked"
  done
  # Every wheel unpacks into nvidia/cu13/{bin,include,lib,nvvm}.
  cp -a "$unpacked"/nvidia/cu13/. "$dir"/
  rm -rf "$unpacked" "$dir/wheels"
  # zip drops execute bits.
  chmod +x "$dir"/bin/* "$dir"/nvvm/bin/*
fi

# cudarc searches lib64 as well; unversioned names for the linker.
ln -sfn lib "$dir/lib64"
for name in cudart cublas cublasLt curand nvrtc; do
  real=$(ls "$dir"/lib/lib$name.so.* 2>/dev/null | sort | head -1)
  [ -n "$real" ] || { echo "lib$name.so.* missing in $dir/lib" >&2; exit 1; }
  ln -sfn "$(basename "$real")" "$dir/lib/lib$name.so"
done

# The link-time stub for libcuda: one dummy function per cu* symbol cudarc declares.
cargo fetch --quiet
bindings=$(ls "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | sort | tail -1)
mkdir -p "$dir/lib/stubs"
grep -o 'fn cu[A-Za-z0-9_]*' "$bindings" | sed 's/^fn //' | sort -u \
  | sed 's/.*/void &(void) {}/' >"$dir/lib/stubs/libcuda.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/lib/stubs/libcuda.so" "$dir/lib/stubs/libcuda.c"

echo "CUDA 13.0 toolchain ready in $dir. Build with:"
echo "  CUDA_ROOT=$dir PATH=$dir/bin:\$PATH CUDA_COMPUTE_CAP=90 cargo build --release --features cuda"
