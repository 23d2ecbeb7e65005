#!/usr/bin/env bash
# Runs `metro check` on NAME.toml in a fixed environment and compares what it prints and its
# exit code with NAME.expected (stderr) and the expected exit code on the file's first line.
set -euo pipefail
metro=$1
name=$2
expected_file="$name.expected"
expected_code=$(head -n1 "$expected_file" | sed -n 's/^# exit \([0-9]*\)$/\1/p')
[[ -n $expected_code ]] || { echo "$expected_file: first line must be '# exit N'"; exit 1; }
actual=$(env -i PATH="$PATH" METRO_TEST_SET=set-value "$metro" check --config "$name.toml" 2>&1) && code=0 || code=$?
if [[ $code != "$expected_code" ]]; then
  echo "exit code $code, expected $expected_code"; echo "$actual"; exit 1
fi
if ! diff -u <(tail -n +2 "$expected_file") <(printf '%s\n' "$actual"); then
  echo "output differs from $expected_file (- expected, + actual)"; exit 1
fi
