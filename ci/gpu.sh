#!/usr/bin/env bash
# GPU runner: GPU-marked tests (failing, not skipping, if CUDA is missing) and the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
ERA_REQUIRE_GPU=1 nox -k "tests and gpu"
nox -k "bench"
