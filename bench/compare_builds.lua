-- bench/compare_builds.lua: one build of osvi.so against the local server,
-- for comparing builds run by run (interleave them: old, new, old, new).
--
--   lua5.4 bench/compare_builds.lua DIR [LATENCY_MS [PREFETCH [CALLS [RUNS]]]]
--
-- DIR holds the osvi.so to measure. Each run lists every call with a fresh
-- client (100 per page) and prints its wall and CPU time.
local dir, latency = assert(arg[1], "usage: compare_builds.lua DIR [...]"), tonumber(arg[2] or 20)
local prefetch, calls, runs = tonumber(arg[3] or 16), tonumber(arg[4] or 20000), tonumber(arg[5] or 3)
package.cpath = dir .. "/?.so;" .. package.cpath
local H = dofile("spec/support/helper.lua")
local osvi = require "osvi"
local socket = require "socket"

local server = H.start { calls = calls, latency_ms = latency }
local warm = osvi.new { token = H.TOKEN, base_url = server.url, prefetch = prefetch }
for _ in warm:calls { per_page = 100 } do end -- the server's page cache
for run = 1, runs do
  local c = osvi.new { token = H.TOKEN, base_url = server.url, prefetch = prefetch }
  local t0, c0, n = socket.gettime(), os.clock(), 0
  for _ in c:calls { per_page = 100 } do n = n + 1 end
  print(string.format("%s: run %d, %d calls, prefetch %d, %g ms: wall %.3f s, CPU %.3f s",
    dir, run, n, prefetch, latency, socket.gettime() - t0, os.clock() - c0))
  c:close()
end
server:stop()
