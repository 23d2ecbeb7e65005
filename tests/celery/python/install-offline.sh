#!/usr/bin/env bash
# python/ installs offline with Debian's pip and setuptools (no index, no build isolation), and the
# installed package is the same API: import it from the install target, nowhere else.
set -euo pipefail
source_dir=$(cd "$(dirname "$0")/../../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$source_dir/python" "$work/src"  # pip builds in the tree it installs from.
/usr/bin/python3 -m pip install --quiet --no-index --no-build-isolation --no-deps \
  --disable-pip-version-check --root-user-action=ignore --target "$work/site" "$work/src"
cd "$work"
PYTHONPATH="$work/site" /usr/bin/python3 -c '
import metro, metro.complete, metro.tasks, sys
assert metro.__file__.startswith(sys.argv[1]), metro.__file__
assert metro.complete_deferred_message is metro.complete.complete_deferred_message
assert metro.tasks.run_handler.name == "metro.run_handler"
print("installed:", metro.__file__)
' "$work/site"
