#!/bin/sh
# The LuaRocks install, checked end to end and offline:
#  1. `luarocks lint` on both rockspecs;
#  2. `luarocks make` of rockspec/osvi-0.1.0-1.rockspec into a throw-away tree
#     (no network: --deps-mode=none, Debian's lua-cjson and libcurl);
#  3. against the installed copy only (LUA_PATH/LUA_CPATH name the tree and
#     Debian's system directories, never the checkout): a script that loads
#     osvi and lists every call of a local server, then the installed
#     bin/osvi-calls (--count, --format csv, a bad flag's exit status).
# Exits non-zero on any failure; removes everything it made.
#
#   sh spec/luarocks.sh
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
LUA=${LUA:-lua5.4}
CALLS=137
TOKEN=osvi-test-token1

work=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "luarocks.sh: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "luarocks lint"
for r in rockspec/osvi-0.1.0-1.rockspec rockspec/osvi-scm-1.rockspec; do
  luarocks --lua-version=5.4 lint "$r" || fail "lint $r"
  echo "$r: ok"
done

# `luarocks make` builds in the current directory (objects next to the
# sources, osvi.so at the top): build in a copy, so the checkout's own build
# (make's src/*.o and osvi.so) is left alone.
step "luarocks make into a throw-away tree"
mkdir "$work/src" "$work/tree"
cp -R src bin rockspec "$work/src/"
tree="$work/tree"
(cd "$work/src" && luarocks --lua-version=5.4 make rockspec/osvi-0.1.0-1.rockspec \
  --tree="$tree" --deps-mode=none \
  CURL_INCDIR=/usr/include/x86_64-linux-gnu CURL_LIBDIR=/usr/lib/x86_64-linux-gnu) \
  || fail "luarocks make"
[ -f "$tree/lib/lua/5.4/osvi.so" ] || fail "osvi.so is not in the tree"
[ -x "$tree/bin/osvi-calls" ] || fail "bin/osvi-calls is not in the tree"

step "the local server"
fifo="$work/server.out"
mkfifo "$fifo"
$LUA spec/support/server.lua --port 0 --calls "$CALLS" --token "$TOKEN" >"$fifo" &
server_pid=$!
read -r line <"$fifo" || line=""
url=$(echo "$line" | sed -n 's/.*listening on \([^ ]*\).*/\1/p')
[ -n "$url" ] || fail "the local server did not start: $line"
echo "$url"

# Only the tree and Debian's system directories (lua-cjson, luarocks' loader);
# no ./?.so and no defaults. Run from an empty directory, away from the checkout.
export LUA_PATH="$tree/share/lua/5.4/?.lua;$tree/share/lua/5.4/?/init.lua;/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua"
export LUA_CPATH="$tree/lib/lua/5.4/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so"
export OSVI_API_TOKEN="$TOKEN" OSVI_BASE_URL="$url"
unset OSVI_LOG OSVI_CPATH 2>/dev/null || true
mkdir "$work/run"
cd "$work/run"

step "the installed module lists the calls"
cat >"$work/check.lua" <<'EOF'
local tree, calls = arg[1], tonumber(arg[2])
local where = assert(package.searchpath("osvi", package.cpath))
assert(where == tree .. "/lib/lua/5.4/osvi.so", "osvi found at " .. where)
local osvi = require "osvi"
assert(osvi._VERSION == "osvi 0.1.0", osvi._VERSION)
local client <close> = osvi.new {}
local n, seen = 0, {}
for call in client:calls { per_page = 50 } do
  assert(type(call.call_id) == "string" and not seen[call.call_id])
  seen[call.call_id] = true
  n = n + 1
end
assert(n == calls, "listed " .. n .. " calls, expected " .. calls)
assert(client:count { status = "picked" } > 0)
print(string.format("%s: listed %d calls", where, n))
EOF
$LUA "$work/check.lua" "$tree" "$CALLS" || fail "the installed module"

step "the installed osvi-calls"
count=$("$tree/bin/osvi-calls" --count) || fail "osvi-calls --count exited with $?"
[ "$count" = "$CALLS" ] || fail "osvi-calls --count printed '$count', expected $CALLS"
echo "osvi-calls --count: $count"
rows=$("$tree/bin/osvi-calls" --format csv --limit 5 | wc -l) || fail "osvi-calls --format csv"
[ "$rows" -eq 6 ] || fail "osvi-calls --format csv --limit 5 gave $rows lines, expected 6"
echo "osvi-calls --format csv --limit 5: $rows lines"
rc=0
"$tree/bin/osvi-calls" --no-such-flag 2>/dev/null || rc=$?
[ "$rc" -eq 2 ] || fail "osvi-calls --no-such-flag exited with $rc, expected 2"
"$tree/bin/osvi-calls" --version

echo "luarocks.sh: ok"
