-- LuaSocket's socket.http (LuaSec's ssl.https for https) + lua-cjson: the common pure-Lua way.
-- Both open one connection per request (they send `Connection: close`); that is how they are
-- used, so that is what is measured.
local ltn12 = require "ltn12"
local cjson = require "cjson"
local bench = require "common"

local http = bench.base_url:match("^https:") and require "ssl.https" or require "socket.http"
local sum = bench.checksum()

local page, pages = 1 -- pages: from the first answer
repeat
  local chunks = {}
  local ok, code = http.request {
    url = bench.page_url(page),
    headers = { ["API-Token"] = bench.token, ["Accept"] = "application/json" },
    sink = ltn12.sink.table(chunks),
    cafile = bench.ca_file, verify = bench.ca_file and "peer" or nil, -- read by LuaSec only
  }
  assert(ok and code == 200, "page " .. page .. ": " .. tostring(code))
  local body = cjson.decode(table.concat(chunks))
  for _, call in ipairs(body.data) do sum:add(call.call_id) end
  pages = body.meta.total_pages
  page = page + 1
until page > pages

sum:report()
