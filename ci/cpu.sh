#!/usr/bin/env bash
# CPU runner: every CPU test of every package, lint and type checks. All logic is in noxfile.py.
set -euo pipefail
cd "$(dirname "$0")/.."
nox -k "tests and cpu"
nox -s lint typecheck
