-- Wall and CPU time of one iteration over the local server for each prefetch
-- setting: the measurement behind the default.
--   lua5.4 bench/prefetch_sweep.lua [calls] [latency_ms]
package.cpath = "./?.so;" .. package.cpath
local H = require "spec.support.helper"
local socket = require "socket"

local calls, latency = tonumber(arg[1]) or 20000, tonumber(arg[2]) or 20
local server = H.start { calls = calls, latency_ms = latency }
print(string.format("%d calls, 100 per page, %d ms per request", calls, latency))
print("prefetch   wall s   cpu s")
for _, n in ipairs { 0, 1, 2, 4, 8, 16 } do
  local client = server:client { prefetch = n }
  local t0, c0, count = socket.gettime(), os.clock(), 0
  for _ in client:calls() do count = count + 1 end
  assert(count == calls, "read " .. count)
  print(string.format("%8d %8.3f %7.3f", n, socket.gettime() - t0, os.clock() - c0))
end
server:stop()
