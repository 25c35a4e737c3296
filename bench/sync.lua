--[[
bench/sync.lua -- the figures of bench/README.md's "osvi-calls sync" section.

  lua5.4 bench/sync.lua [reps=3] [calls=100000] [latency_ms=0]

Starts the local server (spec/support/server.lua) with `calls` calls, answering each API
request after `latency_ms` (0: at once, the machine's CPU is the only limit; a real API is
tens to hundreds of milliseconds away) and, `reps` times each,
round-robin, median reported:
  - iterate: every call with client:calls{} and no database (prefetch 4), the baseline;
    (wall time, and this process's CPU time for iterate and SQLite: a shared machine's load
    moves the CPU ratio less)
  - sqlite:  a first sync of every call into a new SQLite file (osvi.sync, prefetch 4);
  - postgres: the same into a new PostgreSQL database, on a server this script starts in a
    temporary directory (initdb + pg_ctl, as spec/sync_spec.lua does; skipped without them);
then, on the SQLite copy, 1,000 calls arrive and an incremental sync reads them, with the
default overlap (2 days) and with 1 hour: requests counted at the server, time.
]]
package.path = "./lua/?.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath
local osvi = require "osvi"
local sync = require "osvi.sync"
local socket = require "socket"
local cjson = require "cjson"

local REPS = math.max(2, tonumber(arg[1]) or 3) -- two copies at least: one per incremental run
local CALLS = tonumber(arg[2]) or 100000
local LATENCY = tonumber(arg[3]) or 0
local TOKEN = "osvi-test-token1"
local TMP = os.tmpname()
os.remove(TMP)
os.execute("mkdir -p " .. TMP)

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"@@$?\"")
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.-)@@(%d+)%s*$")
  return tonumber(rc) == 0, body or out
end

-- the local server
local proc = assert(io.popen(string.format("exec lua5.4 spec/support/server.lua --port 0 --calls %d --token %s "
  .. "--now 2026-06-30T20:00:00+05:30 --latency-ms %d --exit-with-parent", CALLS, TOKEN, LATENCY)))
local line = proc:read("*l") or ""
local url, server_pid = line:match("listening on (%S+) pid=(%d+)")
assert(url, "the server did not start")
local host, port = url:match("^http://([^:/]+):(%d+)")
local function control(method, path, body)
  local c = assert(socket.connect(host, tonumber(port)))
  body = body and cjson.encode(body) or ""
  c:send(string.format("%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
    method, path, #body, body))
  local resp = c:receive("*a")
  c:close()
  return cjson.decode(resp:match("\r\n\r\n(.*)$"))
end
local function client() return osvi.new { token = TOKEN, base_url = url, prefetch = 4 } end

-- PostgreSQL in a temporary directory (skipped when it cannot start)
local pg_url, pg_stop
do
  local ok, dir = sh("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1")
  dir = ok and dir:gsub("%s+$", "") or ""
  local root = sh("test \"$(id -u)\" = 0")
  local as = root and "runuser -u postgres -- " or ""
  local pgdir = TMP .. "/pg"
  if dir ~= "" and pcall(require, "dbd.postgresql") then
    sh("mkdir -p " .. pgdir .. (root and " && chown postgres " .. pgdir or ""))
    if sh(as .. dir .. "/initdb -D " .. pgdir .. "/data -U osvi -A trust -E UTF8 --locale=C")
        and sh(as .. dir .. "/pg_ctl -D " .. pgdir .. "/data -l " .. pgdir .. "/log -w start -o \"-k " .. pgdir
          .. " -c listen_addresses= -p 54331\"") then
      pg_url = "postgres://osvi@/%s?host=" .. pgdir .. "&port=54331"
      pg_stop = as .. dir .. "/pg_ctl -D " .. pgdir .. "/data -m fast -w stop"
    end
  end
end
local pg_n = 0
local function pg_fresh()
  pg_n = pg_n + 1
  local DBI = require "DBI"
  local conn = assert(DBI.Connect("PostgreSQL", "postgres", "osvi", nil, TMP .. "/pg", 54331))
  conn:autocommit(true)
  assert(conn:prepare("CREATE DATABASE bench" .. pg_n)):execute()
  conn:close()
  return string.format(pg_url, "bench" .. pg_n)
end

-- wall time, and this process's CPU time (os.clock) into cpu[name] when named: the machine
-- is shared, and the CPU ratio moves less with the load than the wall-clock one
local cpu = { iterate = {}, sqlite = {}, server = {} }
-- the server's CPU time so far (utime + stime of /proc/PID/stat), nil when unreadable
local TICKS = tonumber(select(2, sh("getconf CLK_TCK")):match("%d+") or "") or 100
local function server_cpu()
  local f = io.open("/proc/" .. server_pid .. "/stat")
  if not f then return nil end
  local stat = f:read("*a")
  f:close()
  local fields = {}
  for x in (stat:match("%) (.*)") or ""):gmatch("%S+") do fields[#fields + 1] = x end
  local u, k = tonumber(fields[12]), tonumber(fields[13])
  return u and k and (u + k) / TICKS
end
local function timed(fn, name)
  collectgarbage()
  local t, c, s = socket.gettime(), os.clock(), server_cpu()
  local extra = fn()
  if name then table.insert(cpu[name], os.clock() - c) end
  if name == "iterate" and s then table.insert(cpu.server, server_cpu() - s) end
  return socket.gettime() - t, extra
end

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

local times = { iterate = {}, sqlite = {}, postgres = {} }
-- one listing first: the server builds and caches its pages
do local c = client(); for _ in c:calls {} do end; c:close() end
for rep = 1, REPS do
  times.iterate[rep] = timed(function()
    local c, n = client(), 0
    for _ in c:calls {} do n = n + 1 end
    c:close()
    assert(n == CALLS)
  end, "iterate")
  times.sqlite[rep] = timed(function()
    local r = sync.run { db = "sqlite:" .. TMP .. "/sync" .. rep .. ".sqlite", client = client() }
    assert(r.new == CALLS)
  end, "sqlite")
  if pg_url then
    local db = pg_fresh()
    times.postgres[rep] = timed(function()
      local r = sync.run { db = db, client = client() }
      assert(r.new == CALLS)
    end)
  end
end

local it = median(times.iterate)
print(string.format("%d calls, %d reps, server latency %d ms, medians:", CALLS, REPS, LATENCY))
print(string.format("  iterate, no database         %6.2f s", it))
print(string.format("  first sync into SQLite       %6.2f s  (%.2fx)", median(times.sqlite), median(times.sqlite) / it))
print(string.format("  CPU time of this process: iterate %.2f s, SQLite sync %.2f s (%.2fx)", median(cpu.iterate),
  median(cpu.sqlite), median(cpu.sqlite) / median(cpu.iterate)))
-- The floor of the SQLite part (bench/floor_sqlite.c): the first copy's rows written again
-- into a new file by C alone, as osvi.sync writes them. One connection writes on one thread, so
-- a first sync into this schema cannot take less than the floor's wall time; nor, with no
-- latency, less than the client's iterating, the server's answering and the floor's CPU time
-- spread over every core.
local floor_bin = TMP .. "/floor_sqlite"
if sh("cc -O2 -o " .. floor_bin .. " bench/floor_sqlite.c -lsqlite3") then
  local fw, fc = {}, {}
  for rep = 1, REPS do
    local ok, out = sh(floor_bin .. " " .. TMP .. "/sync1.sqlite " .. TMP .. "/floor.sqlite")
    local rows, w, c = out:match("rows (%d+) wall (%S+) cpu (%S+)")
    assert(ok and tonumber(rows) == CALLS, out)
    fw[rep], fc[rep] = tonumber(w), tonumber(c)
  end
  print(string.format("  SQLite floor (C alone: the same rows, schema, pragmas and upsert) %.2f s wall, %.2f s CPU "
    .. "(%.2fx iterate's wall)", median(fw), median(fc), median(fw) / it))
  if #cpu.server > 0 and LATENCY == 0 then
    local cores = tonumber((select(2, sh("nproc")):match("%d+"))) or 1
    local spread = (median(cpu.iterate) + median(cpu.server) + median(fc)) / cores
    local bound = math.max(spread, median(fw))
    print(string.format("  CPU while iterating: client %.2f s, server %.2f s; spread with the floor's over %d cores "
      .. "%.2f s\n  the least a first sync into SQLite can take here: %.2f s (%.2fx)", median(cpu.iterate),
      median(cpu.server), cores, spread, bound, bound / it))
  end
else
  print("  SQLite floor                 skipped (no C compiler or libsqlite3-dev)")
end
if pg_url then
  print(string.format("  first sync into PostgreSQL   %6.2f s  (%.2fx)", median(times.postgres),
    median(times.postgres) / it))
else
  print("  first sync into PostgreSQL   skipped (no PostgreSQL or lua-dbi-postgresql)")
end

-- incremental: 1,000 new calls on a copy of the data set, with the default overlap (2 days)
-- and with 1 hour, each on a copy of its own (the server back to the data set in between)
for k, overlap in ipairs { sync.DEFAULT_OVERLAP, 3600 } do
  local db = "sqlite:" .. TMP .. "/sync" .. k .. ".sqlite"
  control("POST", "/_control/reset")
  control("POST", "/_control/arrive", { calls = 1000 })
  local before = control("GET", "/_control/stats").requests
  local t, r = timed(function() return sync.run { db = db, client = client(), overlap = overlap } end)
  local requests = control("GET", "/_control/stats").requests - before
  print(string.format("  incremental, 1,000 new, overlap %-6s %d requests, %d calls read (%d new, %d updated, "
    .. "%d unchanged), %.2f s", overlap == 3600 and "1h" or "2d", requests, r.calls, r.new, r.updated, r.unchanged, t))
end

if pg_stop then sh(pg_stop) end
os.execute("kill " .. server_pid) -- it would wait for this process to exit, and this one for it
proc:close()
os.execute("rm -rf " .. TMP)
