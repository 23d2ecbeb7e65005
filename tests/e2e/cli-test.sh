#!/usr/bin/env bash
# The metro command's basic contract: --version, --help, exit codes, logging options, redaction,
# options after the subcommand.
set -uo pipefail
metro=$1
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
expect_code() { # expected-code description command...
  local want=$1 what=$2; shift 2
  local out code
  out=$("$@" 2>&1); code=$?
  [[ $code == "$want" ]] || fail "$what: exit $code, expected $want: $out"
  printf '%s' "$out"
}

out=$(expect_code 0 "--version" "$metro" --version)
[[ $out =~ ^metro\ [0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "--version printed '$out'"

out=$(expect_code 0 "--help" "$metro" --help)
[[ $out == *check* && $out == *--log-format* ]] || fail "--help lacks check or --log-format: $out"

expect_code 2 "no subcommand" "$metro" >/dev/null
expect_code 2 "unknown subcommand" "$metro" frobnicate >/dev/null
expect_code 2 "bad log level" "$metro" --log-level loud check --config examples/metro.toml >/dev/null
expect_code 2 "bad log format" "$metro" --log-format xml check --config examples/metro.toml >/dev/null

out=$(expect_code 0 "check example" "$metro" --log-format json check --config examples/metro.toml)
[[ $out == *"OK, 2 subscriptions, 2 handlers"* ]] || fail "check summary: $out"
[[ $out == *"SharedAccessKey=***"* ]] || fail "check summary does not show the redacted key: $out"
[[ $out != *SAS_KEY_VALUE* ]] || fail "check summary shows the key: $out"

out=$(CONNECTION_STRING_METRO_DEMO='Endpoint=sb://h/;SharedAccessKeyName=k;SharedAccessKey=t0psecret;EntityPath=wrong' \
  expect_code 2 "EntityPath error" "$metro" check --config examples/metro.toml)
[[ $out != *t0psecret* ]] || fail "an error message shows the key: $out"
[[ $out == *"EntityPath 'wrong' disagrees"* ]] || fail "EntityPath error missing: $out"

# Options after the subcommand are the same as before it: no usage error (2), metro is simply
# not there (1).
for args in "deferred list --json --url http://127.0.0.1:1" \
            "deferred --json list --url http://127.0.0.1:1" \
            "deferred show orders billing 1 --url http://127.0.0.1:1 --token t --json" \
            "deferred dead-letter orders billing 1 --reason R --url http://127.0.0.1:1" \
            "deferred retry --state failed --subject Orders/ --dry-run --url http://127.0.0.1:1" \
            "deferred groups --url http://127.0.0.1:1" \
            "deferred cancel 0123456789abcdef --url http://127.0.0.1:1"; do
  # shellcheck disable=SC2086
  out=$(expect_code 1 "metro $args" "$metro" $args)
  [[ $out == *"cannot reach http://127.0.0.1:1"* ]] || fail "metro $args: $out"
done
expect_code 0 "--log-level after the subcommand" "$metro" check --config examples/metro.toml --log-level warn >/dev/null
expect_code 2 "an unknown option after the subcommand" "$metro" deferred list --bogus >/dev/null
# A bulk action needs a filter: a forgotten sequence number never means every message.
out=$(expect_code 2 "a bulk retry without a filter" "$metro" deferred retry orders billing --url http://127.0.0.1:1)
[[ $out == *"give a sequence number, or a filter"* ]] || fail "bulk without a filter: $out"

if ((failures)); then echo "$failures failed"; exit 1; fi
echo "cli: all passed"
