#!/usr/bin/env bash
# Smoke test of the stand-in API server (spec/support/server.lua) with curl alone:
# starts it on a free port, runs the checks below, prints PASS/FAIL for each, stops it.
# Exits non-zero if any check fails. Needs lua5.4 with lua-socket and lua-cjson, and curl.
set -u
cd "$(dirname "$0")/../.." || exit 2

LUA=${LUA:-lua5.4}
TOKEN=osvi-test-token1
tmp=$(mktemp -d)
server_pid=

cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# --now pins the data set's dates (the date filter check below names a day of it)
NOW=2026-06-30T20:00:00+05:30
"$LUA" spec/support/server.lua --port 0 --calls 300 --token "$TOKEN" --now "$NOW" \
  >"$tmp/stdout" 2>"$tmp/stderr" &
server_pid=$!
for _ in $(seq 50); do
  grep -q '^osvi-server listening on ' "$tmp/stdout" && break
  sleep 0.1
done
BASE=$(sed -n 's/^osvi-server listening on \(http:[^ ]*\) pid=[0-9]*$/\1/p' "$tmp/stdout")
if [ -z "$BASE" ]; then
  echo "FAIL server did not start"; cat "$tmp/stderr"; exit 1
fi

failures=0
check() { # check NAME COMMAND...: runs the command, PASS if it succeeds
  local name=$1; shift
  if "$@"; then echo "PASS $name"; else echo "FAIL $name"; failures=$((failures + 1)); fi
}

# curl wrappers: the body goes to $tmp/body, the headers to $tmp/headers, the status to $code
api() { code=$(curl -s -D "$tmp/headers" -o "$tmp/body" -w '%{http_code}' -H "API-Token: $TOKEN" "$@"); }
anon() { code=$(curl -s -D "$tmp/headers" -o "$tmp/body" -w '%{http_code}' "$@"); }
post() { anon -X POST -H 'Content-Type: application/json' --data-binary "$2" "$BASE$1"; }
header() { tr -d '\r' <"$tmp/headers" | grep -qix "$1"; }

# json EXPR: EXPR is a Lua expression over j (the last body, decoded), calls (the data set) and
# now (the listing when `listing` last ran, with the calls that arrived since the start)
curl -s -o "$tmp/calls" "$BASE/_control/calls"
listing() { curl -s -o "$tmp/now" "$BASE/_control/calls"; }
json() {
  "$LUA" - "$tmp/body" "$tmp/calls" "$1" "$tmp/now" <<'LUA'
local cjson = require("cjson")
local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local text = f:read("a"); f:close()
  return cjson.decode(text)
end
local env = { j = read(arg[1]), calls = read(arg[2]).data, now = (read(arg[4]) or {}).data,
              null = cjson.null, ipairs = ipairs }
function env.count(list, pred)
  local n = 0
  for _, x in ipairs(list) do if pred(x) then n = n + 1 end end
  return n
end
function env.all(list, pred) return env.count(list, pred) == #list end
local ok = assert(load("return " .. arg[3], "check", "t", env))()
os.exit(ok and 0 or 1)
LUA
}

api "$BASE/v1/calls"
check "page shape: 200, 25 calls, meta, newest first" \
  json "j.success == true and #j.data == 25 and j.data[1].call_id == calls[1].call_id
        and j.meta.current_page == 1 and j.meta.total_pages == 12 and j.meta.total_count == 300
        and j.meta.per_page == 25 and $code == 200"
check "content type and length headers" \
  eval 'header "content-type: application/json; charset=utf-8" && header "content-length: $(wc -c <"$tmp/body")"'

api "$BASE/v1/calls?per_page=500&page=3"
check "per_page capped at 100, third page" \
  json "#j.data == 100 and j.meta.per_page == 100 and j.meta.total_pages == 3
        and j.data[1].call_id == calls[201].call_id"

api "$BASE/v1/calls?status=busy%2Cfailed&per_page=100"
check "status list filter (comma as %2C)" \
  json "all(j.data, function(c) return c.status == 'busy' or c.status == 'failed' end)
        and j.meta.total_count == count(calls, function(c) return c.status == 'busy' or c.status == 'failed' end)
        and j.meta.total_count > 0"

prefix=$("$LUA" -e 'print((require("cjson").decode(io.read("a")).data[5].phone_number:sub(2, 7)))' <"$tmp/calls")
api "$BASE/v1/calls?phone_number=%2B$prefix&per_page=100"
check "phone_number '+' sent as %2B matches the '+'" \
  json "j.meta.total_count >= 1 and all(j.data, function(c) return c.phone_number:find('+$prefix', 1, true) == 1 end)"
api "$BASE/v1/calls?phone_number=+$prefix&per_page=100"
check "phone_number literal '+' stays '+'" \
  json "j.meta.total_count == count(calls, function(c) return c.phone_number:find('+$prefix', 1, true) ~= nil end)"

api "$BASE/v1/calls?start_date=2026-06-30&end_date=2026-06-30&per_page=100"
check "date filter: one IST day of call_picked_at" \
  json "j.meta.total_count > 0 and all(j.data, function(c) return c.call_picked_at:sub(1, 10) == '2026-06-30' end)
        and j.meta.total_count == count(calls, function(c) return c.call_picked_at ~= null and c.call_picked_at:sub(1, 10) == '2026-06-30' end)"

anon "$BASE/v1/calls"
check "401 without API-Token" \
  json "$code == 401 and j.success == false and j.errors[1] == 'invalid or missing API-Token'"

api "$BASE/v1/calls?status=bogus&page=0&per_page=x"
check "422 lists every bad parameter" \
  json "$code == 422 and #j.errors == 3 and j.errors[1] == 'status is invalid'
        and j.errors[2] == 'page is invalid' and j.errors[3] == 'per_page is invalid'"

api "$BASE/v1/calls?agent_uuid=agent_NotOnThisAccount"
check "404 for an agent not on the account" json "$code == 404 and j.errors[1] == 'agent not found'"
api "$BASE/v1/nothing"
check "404 for an unknown path" json "$code == 404 and j.success == false"

post /_control/reset ''
post /_control/script '[{"status": 429, "headers": {"Retry-After": "2"}}]'
api "$BASE/v1/calls"
check "scripted 429 with Retry-After" \
  eval 'json "$code == 429 and j.errors[1] == \"too many requests\"" && header "retry-after: 2"'
api "$BASE/v1/calls"
check "then a normal page" json "$code == 200 and #j.data == 25"

post /_control/reset ''
for page in 1 2 3; do api "$BASE/v1/calls?page=$page"; done
anon "$BASE/_control/stats"
check "stats: 3 requests on 3 connections, raw query logged" \
  json "j.requests == 3 and j.connections == 3 and #j.log == 3 and j.log[3].query == 'page=3'
        and j.log[1].headers['api-token'] == '$TOKEN' and j.log[1].status == 200"

post /_control/reset ''
curl -s -o /dev/null -o /dev/null -H "API-Token: $TOKEN" "$BASE/v1/calls?page=1" "$BASE/v1/calls?page=2"
anon "$BASE/_control/stats"
check "keep-alive: 2 requests on 1 connection" \
  json "j.requests == 2 and j.connections == 1 and j.log[1].connection == j.log[2].connection"

post /_control/script '[{"fault": "reset"}, {"fault": "truncate"}]'
curl -s -o /dev/null -H "API-Token: $TOKEN" "$BASE/v1/calls"; rc_reset=$?
curl -s -o /dev/null -H "API-Token: $TOKEN" "$BASE/v1/calls"; rc_truncate=$?
check "fault reset: connection reset (curl 56)" test "$rc_reset" -eq 56
check "fault truncate: partial body (curl 18)" test "$rc_truncate" -eq 18

post /_control/script '[{"fault": "rest"}]'
check "malformed script: 400" test "$code" -eq 400

# Calls arriving at the top of the listing
post /_control/reset ''
post /_control/arrive '{"calls": 3}'
check "arrive: 3 calls, counted" json "$code == 200 and j.ok == true and j.arrived == 3"
listing
api "$BASE/v1/calls"
check "arrived calls first, newest first and newer than the rest; the cached page 1 is redone" \
  json "j.meta.total_count == 303 and j.meta.total_pages == 13 and j.data[4].call_id == calls[1].call_id
        and j.data[1].created_at > j.data[2].created_at and j.data[2].created_at > j.data[3].created_at
        and j.data[3].created_at > calls[1].created_at
        and count(calls, function(c) return c.call_id == j.data[1].call_id or c.call_id == j.data[3].call_id end) == 0
        and #now == 303 and now[1].call_id == j.data[1].call_id and now[304 - 300].call_id == calls[1].call_id"
api "$BASE/v1/calls?per_page=100&page=4"
check "the last page holds what the arrivals pushed down" \
  json "#j.data == 3 and j.data[3].call_id == calls[300].call_id and j.meta.current_page == 4"
api "$BASE/v1/calls?call_type=inbound&per_page=100&page=1"
check "filters apply to arrived calls" \
  json "j.meta.total_count == count(now, function(c) return c.call_type == 'inbound' end)"
anon "$BASE/_control/stats"
check "stats: arrived" json "j.arrived == 3"
cp "$tmp/now" "$tmp/first3"
post /_control/reset ''
anon "$BASE/_control/stats"
check "reset drops the arrived calls" \
  eval 'json "j.arrived == 0" && curl -s "$BASE/_control/calls" | cmp -s - "$tmp/calls"'
post /_control/arrive '{"calls": 3}'
listing
check "the same calls arrive again after a reset" cmp -s "$tmp/now" "$tmp/first3"

post /_control/reset ''
post /_control/config '{"arrivals_per_request": 2}'
api "$BASE/v1/calls"; api "$BASE/v1/calls?page=2"
check "arrivals_per_request: 2 calls before each request" \
  eval 'json "j.meta.total_count == 304 and j.data[1].call_id == calls[22].call_id" &&
        anon "$BASE/_control/stats" && json "j.arrived == 4"'

post /_control/reset ''
post /_control/config '{"burst_page": 2, "burst_calls": 5}'
api "$BASE/v1/calls"
check "burst: not on other pages" json "j.meta.total_count == 300"
api "$BASE/v1/calls?page=2"
check "burst: 5 calls before the first request for its page" json "j.meta.total_count == 305"
api "$BASE/v1/calls?page=2"
check "burst: once" json "j.meta.total_count == 305"

post /_control/reset ''
post /_control/config '{"slow_page": 2, "slow_ms": 400}'
start=$(date +%s%N)
curl -s -o "$tmp/slow" -H "API-Token: $TOKEN" "$BASE/v1/calls?page=2" & slow_pid=$!
sleep 0.15
post /_control/arrive '{"calls": 4}'
wait "$slow_pid"
took=$(( ($(date +%s%N) - start) / 1000000 ))
cp "$tmp/slow" "$tmp/body"
check "slow page: sleeps, and its answer has the calls that arrived meanwhile (${took} ms)" \
  eval 'json "j.meta.total_count == 304 and j.data[1].call_id == calls[22].call_id" && [ "$took" -ge 400 ]'

post /_control/reset ''
post /_control/script '[{"page": 2, "status": 503}, {"page": 2, "fault": "pass", "arrive": 7}, {"status": 500}]'
api "$BASE/v1/calls?page=2"
check "page action: the first request for page 2 gets its 503" json "$code == 503"
api "$BASE/v1/calls?page=3"
check "page action: other pages take the FIFO script" json "$code == 500"
api "$BASE/v1/calls?page=2"
check "page action: 7 calls arrive before the retry of page 2" json "$code == 200 and j.meta.total_count == 307"
anon "$BASE/_control/stats"
check "page action: logged" json "j.log[1].status == 503 and j.log[3].fault == 'pass' and j.arrived == 7"

post /_control/reset ''
post /_control/script '[{"fault": "arrive", "arrive": 2}]'
api "$BASE/v1/calls"
check "fault arrive: answers as usual, after 2 calls arrived" \
  eval 'json "$code == 200 and j.meta.total_count == 302" && anon "$BASE/_control/stats" &&
        json "j.log[1].fault == \"arrive\" and j.arrived == 2 and j.inflight == 0"'

post /_control/config '{"burst_page": 2}'
check "config: burst_page without burst_calls is a 400" \
  json "$code == 400 and j.error == 'burst_page and burst_calls go together'"
post /_control/config '{"arrivals_per_request": -1}'
check "config: a negative count is a 400" json "$code == 400 and j.error:find('arrivals_per_request', 1, true) == 1"
post /_control/script '[{"fault": "pass", "arrive": 1.5}]'
check "script: a fractional arrive is a 400" json "$code == 400"
post /_control/reset ''

post /_control/shutdown ''
for _ in $(seq 20); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
check "shutdown: answers, then exits" eval '[ "$code" -eq 200 ] && ! kill -0 "$server_pid" 2>/dev/null'

if [ -s "$tmp/stderr" ]; then
  echo "server stderr:"; cat "$tmp/stderr"; failures=$((failures + 1))
fi
echo "$failures failed"
[ "$failures" -eq 0 ]
