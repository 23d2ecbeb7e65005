#!/usr/bin/env bash
# The bash completion completes subcommands, their options and option values of the given
# metro binary (read from its --help).
#   completion-test.sh METRO_BINARY COMPLETION_FILE
set -euo pipefail
metro=$(realpath "$1")
source "$2"
bin_dir=$(mktemp -d)
trap 'rm -rf "$bin_dir"' EXIT
ln -s "$metro" "$bin_dir/metro"
PATH=$bin_dir:$PATH

failures=0
# complete "WORDS…" EXPECTED: completing the last word (may be empty) offers EXPECTED.
expect() {
  local line=$1 expected=$2
  read -r -a COMP_WORDS <<<"$line"
  [[ $line == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMPREPLY=()
  _metro
  if ! printf '%s\n' "${COMPREPLY[@]}" | grep -qxF -- "$expected"; then
    echo "FAIL: '$line' does not offer '$expected' (got: ${COMPREPLY[*]})"
    failures=$((failures + 1))
  fi
}

expect "metro ru" run
expect "metro " emulator
expect "metro --log-l" --log-level
expect "metro --log-level w" warn
expect "metro --log-format " json
expect "metro run --con" --config
expect "metro run --emulator-p" --emulator-port
expect "metro deferred " list
expect "metro deferred list --st" --state
expect "metro deferred list --state fa" failed
expect "metro deferred dead-letter --rea" --reason
expect "metro emulator --tls" --tls-port
expect "metro publish --top" --topic
expect "metro check --config /e" /etc

# Every long option of every subcommand's --help is offered.
for command in check run emulator publish "deferred list" "deferred show"; do
  for option in $("$metro" $command --help | grep -oE '^ +(-[a-z],)?--[a-z-]+' | grep -oE -- '--[a-z-]+'); do
    expect "metro $command ${option:0:4}" "$option"
  done
done

if ((failures)); then exit 1; fi
echo "completion-test: all completions offered"
