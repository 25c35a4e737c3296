-- examples/eventloop/luv_core.lua: bring your own sockets. osvi.core does
-- the paging (what to ask for, retries, exactly once, decoding); this file
-- moves the bytes with libuv TCP and a few lines of HTTP/1.1, for a host
-- that owns its sockets. Plain http:// to an IP address only, and bodies
-- with a Content-Length (what the local server sends): a sketch of a
-- transport, not a general HTTP client.
--
--   lua5.4 examples/eventloop/luv_core.lua http://127.0.0.1:PORT [PREFETCH]
--
-- Prints the number of calls and a digest of their ids. OSVI_API_TOKEN
-- gives the token.
local uv = require "luv"
local osvi = require "osvi"

local host, port = (arg[1] or ""):match("^http://([%d.]+):(%d+)/?$")
assert(host, "usage: luv_core.lua http://IP:PORT [PREFETCH]")
port = tonumber(port)
local token = assert(os.getenv("OSVI_API_TOKEN"), "set OSVI_API_TOKEN")
local core = osvi.core({ per_page = 50 }, { prefetch = tonumber(arg[2] or 2) })

local idle = {} -- kept-alive connections

-- Sends one GET and calls done(status, body, retry_after) or done(nil, why).
local function get(query, done)
  local conn = table.remove(idle)
  local function send(tcp)
    local buf = ""
    tcp:read_start(function(err, chunk)
      if err or not chunk then
        tcp:close()
        return done(nil, err or "connection closed before an answer")
      end
      buf = buf .. chunk
      local head_end = buf:find("\r\n\r\n", 1, true)
      if not head_end then return end
      local head = buf:sub(1, head_end)
      local length = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength:%s*(%d+)"))
      if not length then
        tcp:close()
        return done(nil, "no Content-Length")
      end
      if #buf - head_end - 3 < length then return end
      tcp:read_stop()
      local body = buf:sub(head_end + 4, head_end + 3 + length)
      if head:find("\r\n[Cc]onnection:%s*close") then tcp:close() else idle[#idle + 1] = tcp end
      done(tonumber(head:match("^HTTP/1%.%d (%d%d%d)")), body,
        head:match("\r\n[Rr]etry%-[Aa]fter:%s*([^\r]+)"))
    end)
    tcp:write("GET /v1/calls?" .. query .. " HTTP/1.1\r\nHost: " .. host .. ":" .. port
      .. "\r\nAPI-Token: " .. token .. "\r\nAccept: application/json\r\n\r\n")
  end
  if conn then return send(conn) end
  local tcp = uv.new_tcp()
  tcp:connect(host, port, function(err)
    if err then
      tcp:close()
      return done(nil, err)
    end
    send(tcp)
  end)
end

local calls, hash, finished = 0, 2166136261, false
local timer = uv.new_timer()

-- Hands out what the core has, starts what it asks for, and waits.
local function drive()
  if finished then return end -- an answer that came after the end
  while true do
    local page, err = core:next_page()
    if err then error(tostring(err)) end
    if page == nil then -- the end
      finished = true
      for _, tcp in ipairs(idle) do tcp:close() end
      timer:close()
      return
    end
    if not page then break end
    for _, call in ipairs(page.data) do
      calls = calls + 1
      for k = 1, #call.call_id do hash = ((hash ~ call.call_id:byte(k)) * 16777619) & 0xffffffff end
      hash = ((hash ~ 10) * 16777619) & 0xffffffff
    end
  end
  for _, r in ipairs(core:requests()) do
    get(r.query, function(status, body, retry_after)
      if status then core:answer(r.id, status, body, retry_after)
      else core:failed(r.id, "network", body, true) end
      drive()
    end)
  end
  local wait = core:timeout() -- a retry that is due later
  if wait and wait > 0 then timer:start(math.ceil(wait * 1000), 0, drive) end
end

drive()
uv.run()
print(string.format("luv + osvi.core: %d calls, ids %08x, %d requests", calls, hash, core.stats.requests))
