#!/usr/bin/env bash
# CPU runner: the README's test command (every CPU test, lint, types, release check), then the
# installed-wheel sessions (about an hour). All logic is in noxfile.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# pyenv keeps its other Pythons off PATH unless named; the installed-wheel sessions need 3.12 and 3.13.
if command -v pyenv >/dev/null; then
    PYENV_VERSION="$(pyenv versions --bare | grep -E '^3\.1[123]\.[0-9]+$' | sort -V | paste -sd:)"
    export PYENV_VERSION
fi
nox
nox --error-on-missing-interpreters -k installed
