#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with what the GPU machine lacks, for Python 3.12 there: gsplat
# (its CUDA code is built there, by run.sh) and this project's pinned timm. Run it here, where
# pip reaches PyPI; the device call then carries .whl (see docs/gpu.md).
#
#   bash benchmarks/gpu/prepare_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mkdir -p .whl
rm -f .whl/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "gsplat==1.5.3" "timm==1.0.31"
ls -l .whl
