#!/usr/bin/env bash
# Checks the Debian packages that script/package built in BUILD_DIR: lintian finds no error, each
# package holds what it must, the extracted metro runs (--version, and `check` on the packaged
# example), the man page renders, and `systemd-analyze verify` accepts both units.
#   deb-test.sh BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
arch=$(dpkg --print-architecture)
metro_deb=$build/metro_${version}_$arch.deb
dev_deb=$build/metro-dev_${version}_$arch.deb
work=$(mktemp -d /tmp/metro-deb-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail() {
  echo "deb-test: $*" >&2
  exit 1
}

echo "== lintian"
lintian --fail-on error --tag-display-limit 0 "$metro_deb" "$dev_deb"

echo "== dpkg-deb -c"
dpkg-deb -c "$metro_deb" | tee "$work/metro.list"
dpkg-deb -c "$dev_deb" >"$work/dev.list"
for path in ./usr/bin/metro ./usr/share/man/man1/metro.1.gz \
  ./usr/share/bash-completion/completions/metro \
  ./usr/lib/systemd/system/metro.service ./usr/lib/systemd/system/metro-emulator.service \
  ./usr/share/doc/metro/examples/metro.toml ./usr/share/doc/metro/examples/handlers/print-joke.sh \
  ./usr/share/doc/metro/copyright ./usr/share/doc/metro/changelog.gz \
  ./usr/lib/python3/dist-packages/metro/__init__.py \
  ./usr/lib/python3/dist-packages/metro/complete.py \
  ./usr/lib/python3/dist-packages/metro/tasks.py; do
  grep -q " $path\$" "$work/metro.list" || fail "metro has no $path"
done
! grep -qE '__pycache__|\.pyc$' "$work/metro.list" || fail "metro holds compiled Python files"
for path in ./usr/include/metro/app.hpp ./usr/include/metro/version.hpp \
  ./usr/lib/cmake/metro/metroConfig.cmake ./usr/lib/cmake/metro/metroTargets.cmake \
  ./usr/lib/cmake/metro/MetroDependencies.cmake ./usr/lib/libmetro_app.a \
  ./usr/share/doc/metro-dev/copyright; do
  grep -q " $path\$" "$work/dev.list" || fail "metro-dev has no $path"
done

echo "== control"
dpkg-deb -f "$metro_deb" Version Depends | tee "$work/control"
grep -qx "Version: $version" "$work/control" || fail "the version is not the project's ($version)"
for dependency in adduser libqpid-proton11 libsystemd0 libssl3 libprometheus-cpp-core1.0; do
  grep -q "$dependency" "$work/control" || fail "metro does not depend on $dependency"
done
dpkg-deb -I "$metro_deb" postinst | grep -q "adduser" || fail "postinst creates no metro user"

echo "== the extracted metro"
dpkg-deb -x "$metro_deb" "$work/root"
metro=$work/root/usr/bin/metro
[[ $("$metro" --version) == "metro $version" ]] || fail "metro --version: $("$metro" --version)"
(cd "$work/root/usr/share/doc/metro" && "$metro" check --config examples/metro.toml)
MANWIDTH=80 man --warnings -l "$work/root/usr/share/man/man1/metro.1.gz" 2>"$work/man.err" |
  grep -q "metro run" || fail "the man page has no 'metro run'"
[[ ! -s $work/man.err ]] || fail "the man page: $(cat "$work/man.err")"
bash -n "$work/root/usr/share/bash-completion/completions/metro"
# The Python package imports from the extracted tree, under its own and the original's names;
# metro.tasks registers metro.run_handler with Celery when Celery is there.
PYTHONPATH=$work/root/usr/lib/python3/dist-packages PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -c '
import sys
import metro
from metro import complete_deferred_message, complete_deferred_message_async
from metro.complete import complete_deferred_message as original
assert metro.__file__.startswith(sys.argv[1]), metro.__file__
try:
    import celery  # noqa: F401
except ImportError:
    sys.exit(0)
import metro.tasks
assert metro.tasks.run_handler.name == "metro.run_handler"
' "$work/root/" || fail "the Python package metro does not import from the package"

echo "== systemd-analyze verify"
# The extracted root with the system's own units beside metro's, so that verify finds the
# targets the units name; any message is a failure (unknown keys are only printed).
units=$work/root/usr/lib/systemd/system
for unit in /lib/systemd/system/*; do
  [[ -e $units/$(basename "$unit") ]] || cp -a "$unit" "$units/"
done
MANPATH=$work/root/usr/share/man systemd-analyze verify --root="$work/root" \
  /usr/lib/systemd/system/metro.service /usr/lib/systemd/system/metro-emulator.service \
  >"$work/verify.log" 2>&1 || fail "systemd-analyze verify: $(cat "$work/verify.log")"
[[ ! -s $work/verify.log ]] || fail "systemd-analyze verify: $(cat "$work/verify.log")"
systemd-analyze security --offline=yes --threshold=30 --root="$work/root" metro.service |
  tail -1

echo "deb-test: metro and metro-dev $version pass"
