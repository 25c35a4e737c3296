-- latency.lua URL MS: asks the local test server (spec/support/server.lua)
-- to answer each API request MS milliseconds late, through its control API.
local http = require "socket.http"
local ltn12 = require "ltn12"

local url, ms = arg[1], tonumber(arg[2] or "")
if not url or not ms then
  io.stderr:write("usage: lua5.4 latency.lua URL MS\n")
  os.exit(2)
end
local body = string.format('{"latency_ms": %g}', ms)
local _, code = http.request {
  url = url .. "/_control/config",
  method = "POST",
  headers = { ["content-type"] = "application/json", ["content-length"] = #body },
  source = ltn12.source.string(body),
}
if code ~= 200 then
  io.stderr:write("latency.lua: the server answered ", tostring(code), "\n")
  os.exit(1)
end
