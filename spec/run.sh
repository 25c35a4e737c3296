#!/bin/sh
# Runs every spec under Lua 5.4 with busted and ends with the plain summary
# line "N passed, N failed". Exits non-zero when any spec fails or the runner
# itself dies. Extra arguments go to busted (e.g. --filter=retries).
cd "$(dirname "$0")/.." || exit 2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# busted has no per-test timeout: the whole run is bounded instead
# busted's runner is started by the interpreter itself, which is what
# `busted --lua=lua5.4` does; LUA picks another interpreter (the sanitizer
# build of make check) and OSVI_SPEC_WRAPPER a tool to run it under (valgrind).
set -- ${OSVI_SPEC_WRAPPER:-} "${LUA:-lua5.4}" "$(command -v busted)" -o TAP "$@" spec
{ timeout "${OSVI_SPEC_TIMEOUT:-900}" "$@" 2>&1; echo $? >"$out.rc"; } | tee "$out"
rc=$(cat "$out.rc")
rm -f "$out.rc"
passed=$(grep -c '^ok ' "$out")
failed=$(grep -c '^not ok ' "$out")
# busted exits with the number of failures; anything else non-zero is the
# runner or a tool under it (a sanitizer or valgrind finding an error)
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "# the spec run exited with status $rc"
  failed=1
fi
# a runner that crashed or timed out counts as a failure even with no "not ok"
if ! grep -q '^1\.\.[0-9]' "$out"; then
  echo "# busted did not finish (crash or timeout)"
  failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
