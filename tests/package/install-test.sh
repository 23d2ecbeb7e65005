#!/usr/bin/env bash
# An installed metro, used as its users would: `cmake --install` into an empty prefix, then the
# outside project in tests/package/outside/ (find_package(metro), metro::metro) configured,
# built and run against that prefix alone. Its CMakeLists.txt must be the README's example.
#   install-test.sh BUILD_DIR SOURCE_DIR CXX_COMPILER
set -euo pipefail
build=$1 source=$2 cxx=$3
work=$(mktemp -d /tmp/metro-install-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
outside=$source/tests/package/outside

# The README shows the outside project's CMakeLists.txt as it is.
awk '/^```cmake$/ { block = ""; on = 1; next } on && /^```$/ { if (block ~ /find_package\(metro/) printf "%s", block; on = 0; next } on { block = block $0 "\n" }' \
  "$source/README.md" >"$work/readme-example.cmake"
if ! diff -u "$outside/CMakeLists.txt" "$work/readme-example.cmake"; then
  echo "install-test: README.md's CMake example is not tests/package/outside/CMakeLists.txt" >&2
  exit 1
fi

cmake --install "$build" --prefix "$work/prefix" --component development >"$work/install.log"

# Nothing installed may point back into the build or source tree.
if grep -rlF -e "$build" -e "$source/" "$work/prefix/lib/cmake"; then
  echo "install-test: the installed package config names the build or source tree" >&2
  exit 1
fi

cmake -S "$outside" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
cmake --build "$work/build"

export MY_APP_LEDGER=$work/ledger.db
timeout 300 "$work/build/my_metro_app" "$outside/app.toml" | tee "$work/run.log"
grep -qx "client: received 3 messages" "$work/run.log"
grep -qx "app: handled 3 messages, exit 0" "$work/run.log"
echo "install-test: the installed metro builds and runs an outside program"
