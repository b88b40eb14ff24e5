#!/usr/bin/env bash
# The project's test command (README, .ci/run): makes the venv if missing, installs the
# pinned package with its test extras, runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TVM_POLY_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
set +e
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: the test suite is missing or was deselected" >&2
  exit 1
fi
exit "$rc"
