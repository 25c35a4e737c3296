--[[
bench/resty.lua -- CPU per page: resty.osvi in an nginx worker against osvi's C client (libcurl).

  make LUA_VERSION=5.1 LUA_INCDIR=/usr/include/luajit-2.1 LUA=luajit BUILD=build/luajit
  OSVI_CPATH='build/luajit/?.so' luajit bench/resty.lua [CALLS] [REPS]

Starts the local server (spec/support/server.lua, CALLS calls, default 100,000, 100 per page) and
nginx with resty.osvi (spec/support/nginx.lua: installed by `make install`) and another nginx as
a TLS server in front of the local server (a certificate made here), then lists every call REPS times (default
3) each way: resty.osvi inside nginx (the worker's user+system CPU from /proc/<pid>/stat around the
listing) and the C client in this process (its own CPU, the same way), prefetch 0 and 4, over
HTTP and HTTPS. Prints the median CPU per page. Runs under LuaJIT (the VM nginx runs) or Lua 5.4
(then OSVI_CPATH=./?.so), with luasocket and lua-cjson. The servers' CPU is not counted.
BENCH_NGINX_EXTRA adds lines to the http block of resty.osvi's nginx (lua_socket_buffer_size 64k).
]]
package.path = "./?.lua;" .. package.path
local H = require "spec.support.helper"
local N = require "spec.support.nginx"
local osvi = require "osvi"
local socket = require "socket"

local CALLS = tonumber(arg[1]) or 100000
local REPS = tonumber(arg[2]) or 3
local PAGES = math.ceil(CALLS / 100)

local TICK = tonumber(io.popen("getconf CLK_TCK"):read("*l")) or 100

-- user + system CPU seconds of a process
local function cpu(pid)
  local f = assert(io.open("/proc/" .. pid .. "/stat"))
  local stat = f:read("*a")
  f:close()
  -- fields after the command (which may hold spaces): state is field 3, utime 14, stime 15
  local rest = stat:match("%) (.*)$")
  local fields = {}
  for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / TICK
end

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end

local server = H.start { calls = CALLS }
local pki = N.pki()
-- the TLS server in front of the local server is an nginx of its own, so that the worker that
-- runs resty.osvi does nothing else
local front = N.start { upstream = server, pki = pki }
local nginx = N.start { upstream = server, pki = pki, extra = os.getenv("BENCH_NGINX_EXTRA") }
local worker = nginx:worker_pid()
local self_pid = H.self_pid()

local results = {}
local function measure(name, fn)
  local cpus, walls = {}, {}
  for i = 1, REPS do
    local pid = name:match("^resty") and worker or self_pid
    local c0, t0 = cpu(pid), socket.gettime()
    local n = fn()
    walls[i] = socket.gettime() - t0
    cpus[i] = cpu(pid) - c0
    assert(n == CALLS, name .. ": listed " .. tostring(n) .. " calls, not " .. CALLS)
  end
  local c, w = median(cpus), median(walls)
  results[#results + 1] = string.format("| %-34s | %8.1f | %7.2f | %6.2f |", name, c / PAGES * 1e6, c, w)
  io.stderr:write(results[#results], "\n")
end

-- stops what it started whatever happens (an error would otherwise leave nginx and the server
-- running, and this process waiting for them)
local ok, err = pcall(function()
  for _, proto in ipairs { "http", "https" } do
    local url = proto == "http" and server.url or front.tls.good
    for _, prefetch in ipairs { 0, 4 } do
      measure(string.format("resty.osvi, %s, prefetch %d", proto, prefetch), function()
        local got = nginx:run { op = "calls", count_only = true, filters = { per_page = 100 },
          options = { token = H.TOKEN, base_url = url, prefetch = prefetch, timeout = 30 } }
        assert(not got.error, got.tostring)
        return got.n
      end)
      local client = osvi.new { token = H.TOKEN, base_url = url, prefetch = prefetch, timeout = 30,
                                ca_file = proto == "https" and pki.ca or nil }
      local vm = rawget(_G, "jit") and "LuaJIT" or _VERSION
      measure(string.format("C client (%s), %s, prefetch %d", vm, proto, prefetch), function()
        local n = 0
        for _ in client:calls { per_page = 100 } do n = n + 1 end
        return n
      end)
    end
  end
end)
nginx:stop()
front:stop()
N.remove_pki(pki)
server:stop()
assert(ok, err)

print(string.format("%d calls, %d pages of 100, median of %d runs; CPU = user + system of the nginx worker "
  .. "(resty.osvi) or of the client's process (C client)", CALLS, PAGES, REPS))
print("")
print("| client | CPU µs per page | CPU s | wall s |")
print("|---|---:|---:|---:|")
for _, line in ipairs(results) do print(line) end
