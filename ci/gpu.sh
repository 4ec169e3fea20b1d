#!/usr/bin/env bash
# GPU runner: GPU-marked tests (failing, not skipping, if CUDA is missing), then the short GPU
# benchmarks (noxfile.py's GPU_BENCHMARKS; the long CPU tables are `nox -s bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
ERA_REQUIRE_GPU=1 nox -k "tests and gpu"
nox -s gpu-bench
