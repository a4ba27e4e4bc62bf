#!/usr/bin/env bash
# gsplat's CUDA extension built here, without a GPU, for the H200 (sm_90): a build break is
# found before a GPU is lent, and run.sh's build step is known to work.
#
#   bash benchmarks/gpu/build_check.sh [--fast]     (--fast: -O0, as gsplat's FAST_COMPILE)
#
# Not part of CI: it downloads CUDA 13.0's compiler packages from PyPI (nvcc, NVVM, the CRT
# headers, CCCL; about 0.3 GB unpacked) into $CUDA_PIP (default ~/.cache/fit3d-hub/cuda13),
# gathers them with the runtime headers and libraries torch brings into one CUDA_HOME
# (bin/, include/, lib64/ with unversioned links, nvvm/, version.json), and runs gsplat's
# own JIT build into a fresh folder. Prints the build time and the extension's size.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
fast=0
[[ "${1:-}" == "--fast" ]] && fast=1

cuda_version=$("$PYTHON" -c "import torch; print(torch.version.cuda or '')")
if [[ "$cuda_version" != 13.0 ]]; then
    echo "build_check.sh: expects torch built for CUDA 13.0 (the GPU machine's); this torch says" \
         "'${cuda_version:-CPU only}'" >&2
    exit 2
fi
site_nvidia=$("$PYTHON" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
pip_dir=${CUDA_PIP:-$HOME/.cache/fit3d-hub/cuda13}
if [[ ! -x "$pip_dir/nvidia/cu13/bin/nvcc" ]]; then
    "$PYTHON" -m pip install -q --no-deps --target "$pip_dir" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-cuda-cccl==13.0.*"
fi
pip_cuda="$pip_dir/nvidia/cu13"

home=$(mktemp -d /tmp/fit3d-cuda-home.XXXX)
build=$(mktemp -d /tmp/fit3d-gsplat-build.XXXX)
trap 'rm -rf "$home"' EXIT
mkdir -p "$home/include" "$home/lib64"
ln -s "$pip_cuda/bin" "$home/bin"
ln -s "$pip_cuda/nvvm" "$home/nvvm"
for inc in "$site_nvidia/include" "$pip_cuda/include"; do
    for f in "$inc"/*; do
        [[ -e "$home/include/$(basename "$f")" ]] || ln -s "$f" "$home/include/"
    done
done
for f in "$site_nvidia"/lib/*.so* "$pip_cuda"/lib/*; do
    [[ -e "$f" ]] || continue
    name=$(basename "$f")
    ln -sf "$f" "$home/lib64/$name"
    ln -sf "$f" "$home/lib64/${name%%.so*}.so"   # the unversioned name the linker asks for
done
nvcc_version=$("$home/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
printf '{"cuda": {"name": "CUDA SDK", "version": "%s"}}\n' "$nvcc_version" > "$home/version.json"

echo "CUDA_HOME $home (nvcc $nvcc_version), build folder $build, -O$(( fast ? 0 : 3 ))"
start=$(date +%s)
CUDA_HOME="$home" PATH="$home/bin:$PATH" TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$(nproc)" \
    FAST_COMPILE=$fast TORCH_EXTENSIONS_DIR="$build" \
    "$PYTHON" -c "from gsplat.cuda._backend import _C; assert _C is not None, 'no extension'; print(_C.__file__)"
secs=$(( $(date +%s) - start ))
so=$(find "$build" -name 'gsplat_cuda*.so' | head -n 1)
echo "built $so ($(du -m "$so" | cut -f1) MB, $(find "$build" -name '*.o' | wc -l) objects) in ${secs}s" \
     "on $(nproc) cores"
cuobjdump=$(command -v cuobjdump || true)
[[ -n "$cuobjdump" ]] && "$cuobjdump" --list-elf "$so" | head -n 3
