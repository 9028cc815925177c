#!/usr/bin/env bash
# The project's test command (README): unit tests, the package's doctests, notebooks, strict docs build, then
# checks of the built site (every internal link and image resolves; every page loads in headless Chromium
# without a console error and with its mathematics typeset, when Chromium is installed; otherwise that check is skipped with a message).
set -uo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -p no:cacheprovider tests
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi   # 5 = no tests collected
# the examples (>>>) in the package's docstrings
python -m pytest -q -p no:cacheprovider --doctest-modules energyarch
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
if [ -d notebooks ] && ls notebooks/*.ipynb >/dev/null 2>&1; then
  python -m pytest -q -p no:cacheprovider --nbmake notebooks || exit $?
fi
if [ -f mkdocs.yml ]; then
  start=$SECONDS
  NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --quiet --site-dir site || exit $?
  python scripts/check_site.py site || exit $?
  echo "docs: build and site checks took $((SECONDS - start)) s"
fi
