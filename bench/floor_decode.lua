--[[
bench/floor_decode.lua REPS -- the decode floor.

Fetches every page once (socket.http, untimed) and keeps the bodies in memory; then, REPS
times, decodes them all with lua-cjson and walks every call into the checksum, with no
network. Prints `count=N checksum=H` once, then per repetition `decode <wall_s> <cpu_s>`:
it times itself, since the fetch must not count.
]]
local http = require "socket.http"
local socket = require "socket"
local ltn12 = require "ltn12"
local cjson = require "cjson"
local bench = require "common"

local reps = math.tointeger(tonumber(arg[1] or "1"))

local bodies, pages = {} -- pages: from the first answer
repeat
  local chunks = {}
  local ok, code = http.request {
    url = bench.page_url(#bodies + 1),
    headers = { ["API-Token"] = bench.token, ["Accept"] = "application/json" },
    sink = ltn12.sink.table(chunks),
  }
  assert(ok and code == 200, "page " .. #bodies + 1 .. ": " .. tostring(code))
  bodies[#bodies + 1] = table.concat(chunks)
  pages = cjson.decode(bodies[#bodies]).meta.total_pages
until #bodies >= pages

local decode = cjson.decode
for rep = 1, reps do
  collectgarbage()
  local wall, cpu = socket.gettime(), os.clock()
  local sum = bench.checksum()
  for i = 1, #bodies do
    for _, call in ipairs(decode(bodies[i]).data) do sum:add(call.call_id) end
  end
  wall, cpu = socket.gettime() - wall, os.clock() - cpu
  if rep == 1 then sum:report() end
  io.stdout:write(string.format("decode %.6f %.6f\n", wall, cpu))
end
