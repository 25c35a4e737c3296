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

"$LUA" spec/support/server.lua --port 0 --calls 300 --token "$TOKEN" >"$tmp/stdout" 2>"$tmp/stderr" &
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

# json EXPR: EXPR is a Lua expression over j (the last body, decoded) and calls (the data set)
curl -s -o "$tmp/calls" "$BASE/_control/calls"
json() {
  "$LUA" - "$tmp/body" "$tmp/calls" "$1" <<'LUA'
local cjson = require("cjson")
local function read(path)
  local f = assert(io.open(path)); local text = f:read("a"); f:close()
  return cjson.decode(text)
end
local env = { j = read(arg[1]), calls = read(arg[2]).data, null = cjson.null, ipairs = ipairs }
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

post /_control/shutdown ''
for _ in $(seq 20); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
check "shutdown: answers, then exits" eval '[ "$code" -eq 200 ] && ! kill -0 "$server_pid" 2>/dev/null'

if [ -s "$tmp/stderr" ]; then
  echo "server stderr:"; cat "$tmp/stderr"; failures=$((failures + 1))
fi
echo "$failures failed"
[ "$failures" -eq 0 ]
