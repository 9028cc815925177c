#!/usr/bin/env bash
# The project's test command (README): unit tests, notebooks, strict docs build.
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -p no:cacheprovider tests
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi   # 5 = no tests collected
if [ -d notebooks ] && ls notebooks/*.ipynb >/dev/null 2>&1; then
  python -m pytest -q -p no:cacheprovider --nbmake notebooks || exit $?
fi
if [ -f mkdocs.yml ]; then
  NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --quiet || exit $?
fi
