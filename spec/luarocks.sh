#!/bin/sh
# The LuaRocks install, checked as a user does it, offline (make check-luarocks):
#  1. `luarocks lint` on both rockspecs;
#  2. `luarocks pack`: the source rock of rockspec/osvi-0.1.0-1.rockspec, its
#     source a tarball of the work tree (the files git tracks or would track),
#     served from a local rocks directory (`luarocks-admin make_manifest`);
#  3. `luarocks install --only-server=DIR osvi` into a fresh tree for Lua 5.4
#     (--deps-mode=none: lua-cjson is Debian's, which LuaRocks does not see,
#     as the README says) and one for LuaJIT 2.1 (LuaRocks' Lua 5.1 with
#     LuaJIT's interpreter and headers, and Debian's lua-cjson declared
#     with rocks_provided, so that the `lua` dependency is checked), with no
#     CURL_* variable;
#  4. with only what `luarocks path` sets (from an empty directory, away from
#     the checkout): a script that loads osvi from the tree and lists every
#     call of the local server, then the tree's osvi-calls (--count,
#     --format csv, --version, a bad flag's exit status), under each Lua;
#  5. without libcurl (hidden from the compiler), `luarocks make` stops
#     saying which package to install.
# Exits non-zero on any failure; removes everything it made.
#
#   sh spec/luarocks.sh
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
SERVER_LUA=${LUA:-lua5.4}
CALLS=137
TOKEN=osvi-test-token1
VERSION=0.1.0
ROCKSPEC=rockspec/osvi-$VERSION-1.rockspec

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
for r in $ROCKSPEC rockspec/osvi-scm-1.rockspec; do
  luarocks --lua-version=5.4 lint "$r" || fail "lint $r"
  echo "$r: ok"
done

# The source as a release tarball would hold it: the files git tracks, and
# those it would track once added (not the ignored builds), as they are now.
step "luarocks pack: the source rock"
src="$work/osvi-$VERSION"
mkdir "$src"
git ls-files --cached --others --exclude-standard | grep -v '^bench/\.build/' |
  while read -r f; do if [ -f "$f" ]; then echo "$f"; fi; done >"$work/files" # not if deleted
tar -cf - -T "$work/files" | tar -C "$src" -xf -
[ -f "$src/$ROCKSPEC" ] && [ -f "$src/src/osvi.c" ] && [ -f "$src/bin/osvi-calls" ] ||
  fail "the source tree is incomplete"
tar -C "$work" -czf "$work/osvi-$VERSION.tar.gz" "osvi-$VERSION"
# the release's rockspec, its source the tarball instead of the git tag
sed -e "s|^   url = \"git+https://.*\",\$|   url = \"file://$work/osvi-$VERSION.tar.gz\",|" \
    -e "s|^   tag = \"v$VERSION\",\$|   dir = \"osvi-$VERSION\",|" \
    "$ROCKSPEC" >"$work/osvi-$VERSION-1.rockspec"
grep -q "file://$work" "$work/osvi-$VERSION-1.rockspec" || fail "the rockspec's source was not replaced"
rocks="$work/rocks"
mkdir "$rocks"
(cd "$rocks" && luarocks --lua-version=5.4 pack "$work/osvi-$VERSION-1.rockspec") || fail "luarocks pack"
[ -f "$rocks/osvi-$VERSION-1.src.rock" ] || fail "no source rock"
luarocks-admin make_manifest "$rocks" >/dev/null || fail "luarocks-admin make_manifest"
ls "$rocks"

step "the local server"
fifo="$work/server.out"
mkfifo "$fifo"
$SERVER_LUA spec/support/server.lua --port 0 --calls "$CALLS" --token "$TOKEN" >"$fifo" &
server_pid=$!
read -r line <"$fifo" || line=""
url=$(echo "$line" | sed -n 's/.*listening on \([^ ]*\).*/\1/p')
[ -n "$url" ] || fail "the local server did not start: $line"
echo "$url"

# The check script: loads osvi from the tree (nowhere else) and lists every
# call. Lua 5.1 to 5.4: no <close>.
cat >"$work/check.lua" <<'EOF'
local tree, luaver, calls = arg[1], arg[2], tonumber(arg[3])
local where = assert(package.searchpath("osvi", package.cpath)) -- LuaJIT 2.1 has it too
assert(where == tree .. "/lib/lua/" .. luaver .. "/osvi.so", "osvi found at " .. where)
local osvi = require "osvi"
assert(osvi._VERSION == "osvi 0.1.0", osvi._VERSION)
local client = osvi.new {}
local n, seen = 0, {}
for call in client:calls { per_page = 50 } do
  assert(type(call.call_id) == "string" and not seen[call.call_id])
  seen[call.call_id] = true
  n = n + 1
end
assert(n == calls, "listed " .. n .. " calls, expected " .. calls)
assert(client:count { status = "picked" } > 0)
client:close()
print(string.format("%s (%s): listed %d calls", where, jit and jit.version or _VERSION, n))
EOF

# LuaJIT through LuaRocks' Lua 5.1: its interpreter and headers, and lua-cjson
# provided by the system (Debian's lua-cjson)
cat >"$work/luajit-config.lua" <<'EOF'
lua_interpreter = "luajit"
variables = {
   LUA_DIR = "/usr",
   LUA_BINDIR = "/usr/bin",
   LUA_INCDIR = "/usr/include/luajit-2.1",
   LUA_LIBDIR = "/usr/lib/x86_64-linux-gnu",
}
rocks_provided = { ["lua-cjson"] = "2.1.0-1" }
EOF

# install_and_use NAME LUAVER INTERPRETER [LUAROCKS_CONFIG] -- INSTALL_FLAGS...
install_and_use() {
  name=$1 luaver=$2 interp=$3 config=$4
  shift 5
  tree="$work/tree-$name"
  step "$name: luarocks install --only-server=$rocks osvi $*"
  (cd "$work" && env ${config:+LUAROCKS_CONFIG="$config"} \
    luarocks --lua-version="$luaver" install --only-server="$rocks" --tree="$tree" "$@" osvi) ||
    fail "$name: luarocks install"
  [ -f "$tree/lib/lua/$luaver/osvi.so" ] || fail "$name: osvi.so is not in the tree"
  [ -x "$tree/bin/osvi-calls" ] || fail "$name: osvi-calls is not in the tree"

  step "$name: the installed module, with the paths of luarocks path"
  rm -rf "$work/run" && mkdir "$work/run"
  (
    cd "$work/run"
    eval "$(env ${config:+LUAROCKS_CONFIG="$config"} luarocks --lua-version="$luaver" --tree="$tree" path --bin)"
    export OSVI_API_TOKEN="$TOKEN" OSVI_BASE_URL="$url"
    unset OSVI_LOG OSVI_CPATH LUA_PATH_5_4 LUA_CPATH_5_4 2>/dev/null || true
    "$interp" "$work/check.lua" "$tree" "$luaver" "$CALLS" || fail "$name: the installed module"

    step "$name: the installed osvi-calls, found on PATH"
    [ "$(command -v osvi-calls)" = "$tree/bin/osvi-calls" ] || fail "$name: osvi-calls is not the tree's"
    count=$(osvi-calls --count) || fail "$name: osvi-calls --count exited with $?"
    [ "$count" = "$CALLS" ] || fail "$name: osvi-calls --count printed '$count', expected $CALLS"
    echo "osvi-calls --count: $count"
    rows=$(osvi-calls --format csv --limit 5 | wc -l) || fail "$name: osvi-calls --format csv"
    [ "$rows" -eq 6 ] || fail "$name: osvi-calls --format csv --limit 5 gave $rows lines, expected 6"
    echo "osvi-calls --format csv --limit 5: $rows lines"
    rc=0
    osvi-calls --no-such-flag 2>/dev/null || rc=$?
    [ "$rc" -eq 2 ] || fail "$name: osvi-calls --no-such-flag exited with $rc, expected 2"
    version=$(osvi-calls --version) || fail "$name: osvi-calls --version"
    [ "$version" = "osvi-calls $VERSION (osvi $VERSION)" ] || fail "$name: osvi-calls --version: $version"
    echo "$version"
    # the wrapper LuaRocks wrote runs the tool with the tree's Lua
    grep -q "$interp" "$tree/bin/osvi-calls" || fail "$name: osvi-calls does not run under $interp"
  ) || exit 1
}

install_and_use lua5.4 5.4 lua5.4 "" -- --deps-mode=none
install_and_use luajit 5.1 luajit "$work/luajit-config.lua" --

step "without libcurl, the build says which package to install"
# (libcurl hidden from the compiler: an empty system root, no pkg-config flags)
mkdir "$work/empty-root" "$work/nocurl"
cp -R src bin lua mk rockspec "$work/nocurl/"
rc=0
(cd "$work/nocurl" && CURL_CFLAGS="--sysroot=$work/empty-root" CURL_LIBS="--sysroot=$work/empty-root -lcurl" \
  luarocks --lua-version=5.4 make --tree="$work/tree-nocurl" --deps-mode=none "$ROCKSPEC") \
  >"$work/nocurl.log" 2>&1 || rc=$?
[ "$rc" -ne 0 ] || fail "built without libcurl"
grep -q "install libcurl4-openssl-dev on Debian and Ubuntu" "$work/nocurl.log" ||
  fail "no package named: $(cat "$work/nocurl.log")"
grep -A 1 "osvi needs" "$work/nocurl.log"
# and the sources themselves, compiled without curl.h (src/curl_check.h)
out=$(cc -fsyntax-only --sysroot="$work/empty-root" -x c src/curl_check.h 2>&1) && fail "compiled without curl.h"
echo "$out" | grep -q "install libcurl4-openssl-dev on Debian and Ubuntu" || fail "no package named: $out"

cd "$root"
echo "luarocks.sh: ok"
