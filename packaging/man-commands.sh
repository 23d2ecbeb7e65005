#!/usr/bin/env bash
# Writes a help2man include file with a COMMANDS section: the --help of every subcommand of the
# given metro binary (and of theirs), so that the man page holds what `metro --help` leaves out.
#   man-commands.sh METRO_BINARY OUTPUT_FILE
set -euo pipefail
metro=$1
output=$2

subcommands() {
  "$metro" "$@" --help | awk '/^Subcommands:/ { on = 1; next } on && /^  [a-z]/ { print $1 }'
}

# Help text as roff: backslashes escaped, no line starting with a control character.
as_roff() {
  sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/" -e 's/-/\\-/g'
}

section() {
  echo ".SS \"metro $*\""
  echo ".nf"
  "$metro" "$@" --help | as_roff
  echo ".fi"
  local sub
  for sub in $(subcommands "$@"); do section "$@" "$sub"; done
}

{
  echo "[COMMANDS]"
  for command in $(subcommands); do section "$command"; done
} >"$output.tmp"
mv "$output.tmp" "$output"
