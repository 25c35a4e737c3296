#!/usr/bin/env bash
# examples/openresty/run.sh -- Debian's nginx + Lua module (LuaJIT) serving OSVI call reports with
# resty.osvi, from the local OSVI server, checked with curl. From anywhere:
#
#   bash examples/openresty/run.sh
#
# Installs what is missing (apt-get, as root), builds build/luajit/osvi.so and installs osvi with
# `make install` into a temporary tree, starts the server (spec/support/server.lua, 250 calls,
# 200 ms per API request) and nginx (nginx.conf.in, one worker) on free ports of 127.0.0.1 under a
# temporary prefix, runs the checks, stops both (also on failure or interrupt) and ends with
# "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
root=$(pwd)

# Whatever happens, stop what this script started and remove its directory.
tmp='' server_pid='' nginx_pid=''
cleanup() {
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "$tmp" ] && rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The Lua module needs OpenResty's LuaJIT branch (libluajit2-5.1-2, through lua-resty-core),
# which conflicts with Debian's luajit/libluajit-5.1-dev: osvi builds against libluajit2-5.1-dev,
# whose headers are the same /usr/include/luajit-2.1.
PKGS="gcc make pkg-config libcurl4-openssl-dev lua-cjson libluajit2-5.1-dev luajit2
      lua5.4 lua-socket curl ca-certificates nginx libnginx-mod-http-lua"
# Installed means "install ok installed": `dpkg -s` also succeeds for a package removed with its
# configuration files left (state rc), as apt leaves libnginx-mod-http-lua when luajit replaces it.
installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }
missing=""
for p in $PKGS; do installed "$p" || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  log=$(mktemp)
  # shellcheck disable=SC2086  # one word per package
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -qq --no-install-recommends $missing; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; echo "cannot install:$missing" >&2; exit 2
  fi
  rm -f "$log"
fi

TOKEN=osvi-test-token1
CALLS=250      # 3 pages of 100
LATENCY=200    # ms the server waits before each API answer
N=4            # concurrent requests in the overlap check

tmp=$(mktemp -d "${TMPDIR:-/tmp}/osvi-openresty.XXXXXX") || exit 2
chmod 755 "$tmp"   # nginx's workers create their temporary directories in it

# The Makefile's LuaJIT build (as its test-luajit target), only what is out of date, installed as a
# user would: osvi.so into INST_LIBDIR, resty/osvi.lua and resty/osvi/http.lua into INST_LUADIR.
LUAJIT_ARGS="LUA_VERSION=5.1 LUA_INCDIR=/usr/include/luajit-2.1 LUA=luajit BUILD=build/luajit"
# shellcheck disable=SC2086  # one word per variable
make --no-print-directory $LUAJIT_ARGS DESTDIR="$tmp/osvi" INST_LIBDIR=/lib INST_LUADIR=/share \
  INST_BINDIR=/bin install >/dev/null || { echo "building or installing osvi failed" >&2; exit 2; }

# --- the local OSVI server ----------------------------------------------------------------
lua5.4 spec/support/server.lua --port 0 --calls "$CALLS" --latency-ms "$LATENCY" \
  >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
api=
for _ in $(seq 50); do
  api=$(sed -n 's|^osvi-server listening on \(http://127\.0\.0\.1:[0-9]*\) pid=.*|\1|p' "$tmp/server.out")
  [ -n "$api" ] && break
  sleep 0.1
done
[ -n "$api" ] || { echo "the local server did not start:" >&2; cat "$tmp/server.err" >&2; exit 2; }

# --- nginx, on a free port (asked of the kernel; tried again if taken meanwhile) -------------
free_port() { lua5.4 -e 'local s = require("socket").bind("127.0.0.1", 0); local _, p = s:getsockname(); print(p); s:close()'; }
for _ in 1 2 3; do
  port=$(free_port)
  mkdir -p "$tmp/nginx/tmp"
  sed -e "s|@USER@|$(id -un)|" -e "s|@PORT@|$port|" -e "s|@ROOT@|$root|g" \
      -e "s|@LIBDIR@|$tmp/osvi/lib|" -e "s|@LUADIR@|$tmp/osvi/share|" \
      examples/openresty/nginx.conf.in >"$tmp/nginx/nginx.conf"
  OSVI_API_TOKEN=$TOKEN OSVI_BASE_URL=$api \
    nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" 2>>"$tmp/nginx/stderr" &
  nginx_pid=$!
  for _ in $(seq 50); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/ping" && break 2
    kill -0 "$nginx_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$nginx_pid" 2>/dev/null; wait "$nginx_pid" 2>/dev/null; nginx_pid=
done
if [ -z "$nginx_pid" ]; then
  echo "nginx did not start:" >&2
  cat "$tmp/nginx/stderr" "$tmp/nginx/error.log" >&2 2>/dev/null
  exit 2
fi
base=http://127.0.0.1:$port
echo "local OSVI server $api (${LATENCY} ms per request, $CALLS calls); nginx $base, pid $nginx_pid"

# --- helpers --------------------------------------------------------------------------------
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $*"; }
not_ok() { failed=$((failed + 1)); echo "FAIL $*"; }
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
# GET (or POST with -X POST) base PATH into $tmp/body; prints the HTTP status
http() { curl -s --max-time 10 -o "$tmp/body" -w '%{http_code}' "$@"; }
control() { curl -sf --max-time 5 -o /dev/null -X POST "$api/_control/$1" ${2:+--data "$2"}; }
stat_of() { curl -sf "$api/_control/stats" | grep -o "\"$1\":[0-9]*" | head -n 1 | cut -d: -f2; }

# "count=N pages=N by_status=k:n,... ids_md5=H" of an answer of /calls (or /report) on stdin
summary_of_answer() {
  lua5.4 -e '
    local v = require("cjson").decode(io.read("a"))
    local s = {}
    for k, n in pairs(v.by_status or {}) do s[#s + 1] = ("%s:%d"):format(k, n) end
    table.sort(s)
    print(("count=%d pages=%d by_status=%s ids_md5=%s"):format(v.count, v.pages, table.concat(s, ","), v.ids_md5))'
}
# the same line from the server's own data, for the statuses given (all when empty)
summary_of_server() {
  curl -sf --max-time 5 "$api/_control/calls" | STATUSES="${1:-}" IDS="$tmp/ids" lua5.4 -e '
    local want, ids, by, n = {}, {}, {}, 0
    for st in os.getenv("STATUSES"):gmatch("[^,]+") do want[st] = true end
    for _, c in ipairs(require("cjson").decode(io.read("a")).data) do
      if next(want) == nil or want[c.status] then
        n = n + 1; ids[n] = c.call_id; by[c.status] = (by[c.status] or 0) + 1
      end
    end
    local s = {}
    for k, m in pairs(by) do s[#s + 1] = k .. ":" .. m end
    table.sort(s)
    local f = assert(io.open(os.getenv("IDS"), "w")); f:write(table.concat(ids, "\n")); f:close()
    io.write(("count=%d pages=%d by_status=%s ids_md5="):format(n, math.max(1, (n + 99) // 100), table.concat(s, ",")))'
  md5sum <"$tmp/ids" | cut -c1-32
}
# "count=N ids_md5=H" of the C client (osvi.so for LuaJIT, libcurl) for a query string
summary_of_c_client() {
  QUERY=$1 IDS="$tmp/cids" OSVI_API_TOKEN=$TOKEN OSVI_BASE_URL=$api luajit -e '
    package.cpath = "build/luajit/?.so;/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;" .. package.cpath
    local osvi = require "osvi"
    local filters = {}
    for k, v in os.getenv("QUERY"):gmatch("([^&=]+)=([^&]*)") do
      filters[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    end
    local ids = {}
    for call in osvi.new{}:calls(filters) do ids[#ids + 1] = call.call_id end
    local f = assert(io.open(os.getenv("IDS"), "w")); f:write(table.concat(ids, "\n")); f:close()
    io.write("count=", #ids, " ids_md5=")'
  md5sum <"$tmp/cids" | cut -c1-32
}
# prints the wall time (ms) of N requests to URL sent at once; each answer must be a 200
at_once() {
  local url=$1 start i bad=0 pids=()
  start=$(now_ms)
  for ((i = 0; i < N; i++)); do
    curl -s --max-time 10 -o /dev/null -w "%{http_code}" "$url" >"$tmp/status$i" &
    pids+=($!)
  done
  wait "${pids[@]}"
  echo $(($(now_ms) - start))
  for ((i = 0; i < N; i++)); do [ "$(cat "$tmp/status$i")" = 200 ] || bad=1; done
  return $bad
}
# the wall time (ms) of one request, which must be a 200
one() {
  local start status
  start=$(now_ms)
  status=$(http "$1")
  echo $(($(now_ms) - start))
  [ "$status" = 200 ]
}

# --- the request handler: /calls, the same calls as the server's data ----------------------
for statuses in "" "picked,voicemail"; do
  path=/calls${statuses:+?status=$statuses}
  status=$(http "$base$path")
  got=$(summary_of_answer <"$tmp/body" 2>/dev/null)
  want=$(summary_of_server "$statuses")
  if [ "$status" = 200 ] && [ -n "$got" ] && [ "$got" = "$want" ]; then ok "$path: $got"
  else not_ok "$path: HTTP $status, $got, want $want: $(cat "$tmp/body")"; fi
done

# other filters, percent-encoded in the URL: the same calls as the C client (libcurl) lists
q='phone_number=%2B91&start_date=2026-06-01T00:00:00%2B05:30&call_type=outbound&status=picked,voicemail'
status=$(http "$base/calls?$q")
got=$(lua5.4 -e 'local v = require("cjson").decode(io.read("a")); io.write("count=", v.count, " ids_md5=", v.ids_md5)' \
      <"$tmp/body" 2>/dev/null)
want=$(summary_of_c_client "$q")
if [ "$status" = 200 ] && [ -n "$got" ] && [ "$got" = "$want" ] && [ "${got#count=0 }" = "$got" ]; then
  ok "/calls?$q = the C client's: $got"
else not_ok "/calls?$q: HTTP $status $got; the C client: $want"; fi

# a bad filter: 400 with osvi's usage message, and no request to the API
control reset
status=$(http "$base/calls?stauts=picked")
if [ "$status" = 400 ] && grep -q "did you mean 'status'" "$tmp/body" && [ "$(stat_of requests)" = 0 ]
then ok "bad filter -> 400: $(cat "$tmp/body")"; else not_ok "bad filter: HTTP $status $(cat "$tmp/body")"; fi
status=$(http "$base/calls?per_page=500")
if [ "$status" = 400 ] && grep -q '"key":"per_page"' "$tmp/body"; then ok "per_page=500 -> 400"
else not_ok "per_page=500: HTTP $status $(cat "$tmp/body")"; fi

# an osvi error kind from the API: a refused token is a 502 naming the kind
control script '[{"status":401}]'
status=$(http "$base/calls")
if [ "$status" = 502 ] && grep -q '"error":"auth"' "$tmp/body"; then ok "API 401 -> 502: $(cat "$tmp/body")"
else not_ok "API 401: HTTP $status $(cat "$tmp/body")"; fi

# a 429 with Retry-After is waited out (ngx.sleep, which yields) and retried: page 1, page 1
# again, then pages 2 and 3
control reset
control script '[{"status":429,"headers":{"Retry-After":"1"}}]'
status=$(http "$base/calls")
requests=$(stat_of requests)
if [ "$status" = 200 ] && grep -q "\"count\":$CALLS" "$tmp/body" && [ "$requests" = 4 ]
then ok "429 + Retry-After: 1 -> retried, 200 after 4 API requests"
else not_ok "429: HTTP $status, $requests requests: $(cat "$tmp/body")"; fi

# the API gets the token and nothing of the client's request; nginx's logs never the token
control reset
http -H 'Cookie: session=secret-cookie' -H 'Authorization: Bearer client-secret' "$base/calls?status=in_progress" >/dev/null
headers=$(curl -sf "$api/_control/stats")
if grep -q "\"api-token\":\"$TOKEN\"" <<<"$headers" && ! grep -qi 'secret' <<<"$headers" &&
   ! grep -q "$TOKEN" "$tmp/nginx/error.log" "$tmp/nginx/access.log"
then ok "API requests carry the token and no client header; no token in nginx's logs"
else not_ok "headers sent to the API: $headers"; fi

# --- non-blocking: N requests at once on the one worker overlap; prefetch within each -------
control reset
t1=$(one "$base/calls") || not_ok "/calls alone failed"
inflight1=$(stat_of max_inflight)
control reset
tn=$(at_once "$base/calls") || not_ok "/calls x$N at once: not all 200"
inflight=$(stat_of max_inflight)
# 3 pages: page 1 (which says how many there are), then pages 2 and 3 together
if [ "$t1" -lt $((3 * LATENCY)) ] && [ "$inflight1" -ge 2 ]; then
  ok "prefetch: one /calls (3 pages) in ${t1} ms, $inflight1 API requests in flight at once"
else not_ok "prefetch: one /calls ${t1} ms, in flight at once $inflight1"; fi
if [ "$tn" -lt $((2 * t1)) ] && [ "$inflight" -ge $((2 * N)) ]; then
  ok "non-blocking: $N at once ${tn} ms (serial would be ~$((N * t1)) ms); API requests in flight at once: $inflight"
else not_ok "non-blocking: one ${t1} ms, $N at once ${tn} ms, in flight at once $inflight"; fi

# --- the timer: the report it made at start, and a refresh that does not stall the worker ----
for _ in $(seq 100); do
  [ "$(http "$base/report")" = 200 ] && break
  sleep 0.1
done
got=$(summary_of_answer <"$tmp/body" 2>/dev/null)
first=$(lua5.4 -e 'print(require("cjson").decode(io.read("a")).refreshed_at)' <"$tmp/body" 2>/dev/null)
want=$(summary_of_server "")
if grep -q '"state":"done"' "$tmp/body" && [ "$got" = "$want" ]; then
  ok "timer: the report made at start (init_worker_by_lua, ngx.timer.every): $got"
else not_ok "timer: report $(cat "$tmp/body"): $got, want $want"; fi

start=$(now_ms)
status=$(http -X POST "$base/report/refresh")
refresh_ms=$(($(now_ms) - start))
sleep 0.1
# reaches the worker while the timer's job waits for the API; curl's own time (no process start)
ping_ms=$(curl -s --max-time 10 -o /dev/null -w '%{time_total}' "$base/ping" | awk '{ printf "%d", $1 * 1000 }')
for _ in $(seq 100); do
  http "$base/report" >/dev/null
  again=$(lua5.4 -e 'print(require("cjson").decode(io.read("a")).refreshed_at)' <"$tmp/body" 2>/dev/null)
  [ "$again" != "$first" ] && break
  sleep 0.1
done
got=$(summary_of_answer <"$tmp/body" 2>/dev/null)
if [ "$status" = 202 ] && [ "$again" != "$first" ] && [ "$got" = "$want" ]; then
  ok "timer: /report/refresh answered in ${refresh_ms} ms; the report refreshed: $got"
else not_ok "timer: refresh HTTP $status; report $(cat "$tmp/body"): $got, want $want"; fi
if [ "$ping_ms" -lt 50 ]; then
  ok "timer: a /ping sent while the job ran answered in ${ping_ms} ms: the job does not stall its worker"
else not_ok "timer: /ping took ${ping_ms} ms while the job ran"; fi

if grep -E '\[(alert|crit|emerg)\]|lua entry thread aborted' "$tmp/nginx/error.log"; then
  not_ok "nginx's error log has errors (above)"
fi
[ "$failed" -eq 0 ] || { echo "--- nginx error.log (tail)"; tail -n 30 "$tmp/nginx/error.log"; }
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
