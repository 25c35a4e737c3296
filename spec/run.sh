#!/bin/sh
# Runs every spec under Lua 5.4 with busted and ends with the plain summary
# line "N passed, N failed". Exits non-zero when any spec fails or the runner
# itself dies. Extra arguments go to busted (e.g. --filter=retries).
cd "$(dirname "$0")/.." || exit 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# busted has no per-test timeout: the whole run is bounded instead
# OSVI_SPEC_WRAPPER runs the interpreter under a tool (valgrind in make check):
# then busted's runner is started by that lua directly, which is what
# `busted --lua=...` does too.
if [ -n "${OSVI_SPEC_WRAPPER:-}" ]; then
  set -- $OSVI_SPEC_WRAPPER "${LUA:-lua5.4}" "$(command -v busted)" -o TAP "$@" spec
else
  set -- busted --lua="${LUA:-lua5.4}" -o TAP "$@" spec
fi
timeout "${OSVI_SPEC_TIMEOUT:-900}" "$@" 2>&1 | tee "$out"
passed=$(grep -c '^ok ' "$out")
failed=$(grep -c '^not ok ' "$out")
# a runner that crashed or timed out counts as a failure even with no "not ok"
if ! grep -q '^1\.\.[0-9]' "$out"; then
  echo "# busted did not finish (crash or timeout)"
  failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
