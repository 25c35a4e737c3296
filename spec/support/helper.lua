-- Spec helpers: start the local OSVI server (spec/support/server.lua) on a
-- free port of 127.0.0.1, talk to its control API, and run Lua snippets in a
-- child process (for environment variables and crashes).
-- OSVI_CPATH picks another build of osvi.so (the sanitizer builds of make check,
-- the builds for other Lua versions of make test-versions). The specs run on
-- Lua 5.4, 5.3, 5.1 and LuaJIT: this file and the specs stay within what all
-- of them have, and the few differences are below.
local CPATH = os.getenv("OSVI_CPATH") or "./?.so"
package.cpath = CPATH .. ";" .. package.cpath
-- the project's Lua modules (osvi.sync, resty.osvi), from the checkout
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path

local socket = require "socket"
local cjson = require "cjson"

local M = {}

M.TOKEN = "osvi-test-token1"
-- the interpreter for child processes (H.run_lua): the one running the specs
M.LUA = os.getenv("LUA") or "lua5.4"

-- What differs between versions. LuaJIT says "Lua 5.1".
M.VERSION = tonumber(_VERSION:match("^Lua (%d+%.%d+)$"))
-- to-be-closed variables, and so the for loop's closing value: 5.4 only
M.HAS_CLOSE = M.VERSION >= 5.4

-- The local server needs Lua 5.3 or later (integer division, bitwise
-- operators): it runs under LUA when that is 5.3 or later, else lua5.4.
-- OSVI_SERVER_LUA picks another interpreter for it.
M.SERVER_LUA = os.getenv("OSVI_SERVER_LUA") or (M.VERSION >= 5.3 and M.LUA) or "lua5.4"

--- math.type where numbers have subtypes (5.3 and later); on 5.1 and
--- LuaJIT, where every number is a double, "integer" for an integral number
--- within 2^53 (exact in a double) and "float" for any other number.
function M.math_type(v)
  if math.type then return math.type(v) end
  if type(v) ~= "number" then return nil end
  if v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return "integer" end
  return "float"
end

--- The osvi.so that require "osvi" loads here (the first one on OSVI_CPATH).
function M.module_file()
  for pattern in CPATH:gmatch("[^;]+") do
    local name = pattern:gsub("%?", "osvi")
    local f = io.open(name)
    if f then f:close() return name end
  end
end

--- os.execute's success as a boolean: 5.1 and LuaJIT give a status number.
function M.execute(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local Server = {}
Server.__index = Server

-- The specs' servers serve a fixed data set: the newest call at this time
-- (the server's default is the time it starts), so that dates in the specs
-- match it whatever day they run.
M.SERVER_NOW = "2026-06-30T20:00:00+05:30"

--- Starts a server; opts: calls, seed, latency_ms, now (default M.SERVER_NOW).
--- It exits with this process (--exit-with-parent). Returns the server object.
function M.start(opts)
  opts = opts or {}
  local cmd = string.format(
    "exec %s spec/support/server.lua --port 0 --calls %d --seed %d --token %s --latency-ms %d"
      .. " --now %s --exit-with-parent",
    M.SERVER_LUA, opts.calls or 300, opts.seed or 1, M.TOKEN, opts.latency_ms or 0, opts.now or M.SERVER_NOW)
  local proc = assert(io.popen(cmd, "r"))
  local line = proc:read("*l")
  local url, pid = (line or ""):match("listening on (%S+) pid=(%d+)")
  assert(url, "the local server did not start: " .. tostring(line))
  local host, port = url:match("^http://([^:/]+):(%d+)")
  return setmetatable({ url = url, pid = pid, proc = proc, host = host,
                        port = tonumber(port) }, Server)
end

function Server:stop()
  if self.proc then
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    self.proc:close()
    self.proc = nil
  end
end

--- One control request over its own connection; returns status, body.
function Server:request(method, path, body)
  local c = assert(socket.connect(self.host, self.port))
  c:settimeout(10)
  c:setoption("tcp-nodelay", true)
  body = body or ""
  assert(c:send(string.format(
    "%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
    method, path, self.host, self.port, #body, body)))
  local status_line = assert(c:receive("*l"))
  local status = tonumber(status_line:match("^HTTP/1%.%d (%d%d%d)"))
  local length
  while true do
    local h = assert(c:receive("*l"))
    if h == "" then break end
    local n = h:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
    if n then length = tonumber(n) end
  end
  local resp = length and c:receive(length) or c:receive("*a")
  c:close()
  return status, resp
end

function Server:control(method, path, value)
  local status, body = self:request(method, path, value ~= nil and cjson.encode(value) or "")
  assert(status == 200, "control " .. path .. " answered " .. tostring(status) .. ": " .. tostring(body))
  return cjson.decode(body)
end

function Server:reset() return self:control("POST", "/_control/reset") end
function Server:stats() return self:control("GET", "/_control/stats") end
function Server:calls() return self:control("GET", "/_control/calls").data end
function Server:config(t) return self:control("POST", "/_control/config", t) end

--- Queues answers for the next /v1/calls requests (see server.lua).
function Server:script(actions)
  return self:control("POST", "/_control/script", actions)
end

--- k calls arrive now at the top of the listing (see server.lua); returns
--- how many have arrived since the last reset.
function Server:arrive(k)
  return self:control("POST", "/_control/arrive", { calls = k }).arrived
end

--- How many calls have arrived since the last reset.
function Server:arrived() return self:stats().arrived end

--- The stats once no API request is being answered (a request the client
--- gave up on may still sleep at the server, and its calls arrive after
--- that); waits at most `timeout` seconds (default 3), then fails.
function Server:idle(timeout)
  local deadline = socket.gettime() + (timeout or 3)
  while true do
    local stats = self:stats()
    if stats.inflight == 0 then return stats end
    assert(socket.gettime() < deadline, "the server still answers " .. tostring(stats.inflight) .. " requests")
    socket.sleep(0.01)
  end
end

--- A client for this server; extra options override the defaults. Specs
--- count requests, so nothing is prefetched unless a spec asks for it.
function Server:client(opts)
  local osvi = require "osvi"
  local o = { token = M.TOKEN, base_url = self.url, timeout = 5,
              connect_timeout = 2, retry_base = 0.01, prefetch = 0 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return osvi.new(o)
end

--- Runs a Lua chunk in a child interpreter (LUA) with the given environment;
--- returns its exit status (true/false) and its output (stdout and stderr).
function M.run_lua(code, env)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write(string.format("package.cpath = %q .. package.cpath\n", CPATH .. ";"), code)
  f:close()
  local prefix = ""
  for k, v in pairs(env or {}) do
    prefix = prefix .. string.format("%s='%s' ", k, v)
  end
  -- the exit status is read from the output: on 5.1 and LuaJIT, closing a
  -- pipe does not tell it
  local p = io.popen("env -u OSVI_API_TOKEN -u OSVI_BASE_URL " .. prefix ..
                     M.LUA .. " " .. tmp .. " 2>&1; echo \"@@exit=$?\"")
  local out = p:read("*a")
  p:close()
  os.remove(tmp)
  local rest, status = out:match("^(.-)@@exit=(%d+)\n$")
  return status == "0", rest or out
end

--- The pid of this Lua process.
function M.self_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = f:read("*n")
  f:close()
  return pid
end

--- A port of 127.0.0.1 with nothing listening: bound by the system, then
--- closed (a fixed port such as 1 may be in use on a shared machine).
function M.closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

--- client:page(filters) must fail: returns its error object.
function M.fails(client, filters)
  local assert = require "luassert" -- busted's, which spec files see as a global
  local page, err = client:page(filters or {})
  assert.is_nil(page)
  assert.equal("table", type(err))
  return err
end

--- Calls fn and returns the error object it raises (fails if none).
function M.raises(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error, got none")
  return err
end

--- A JSON page body with the given calls and meta.
function M.page_body(calls, meta)
  return cjson.encode({ success = true, data = calls, meta = meta })
end

--- A page body of calls that have only a call_id, per_page 3: for scripts
--- of the paging anomalies and repeats across page boundaries.
function M.ids_page(ids, page, total)
  local parts = {}
  for i, id in ipairs(ids) do parts[i] = '{"call_id":"' .. id .. '"}' end
  return string.format('{"success":true,"data":[%s],"meta":{"current_page":%d,'
    .. '"total_pages":%d,"total_count":%d,"per_page":3}}', table.concat(parts, ","), page, total, total * 3)
end

--- A seeded generator of integers lo..hi, the same on every Lua version
--- (Park and Miller's minimal standard: every product is exact in a double).
function M.seeded(seed)
  local x = seed % 2147483646 + 1
  return function(lo, hi)
    x = x * 48271 % 2147483647
    return lo + x % (hi - lo + 1)
  end
end

--- What is wrong with `got` (the call_ids a listing yielded, in order) as a
--- listing that started when the server had the calls `before` and ended
--- when it had `after` (both as server:calls() gives them): every call of
--- `before` (its first `limit` calls, if given) exactly once and in its
--- order; a call that arrived in between (in `after` only) at most once;
--- nothing else. Returns nil when all is well, else a message with the
--- counts of missing, repeated, misplaced and unwanted calls and the first
--- few of each.
function M.listing_problems(before, after, got, limit)
  limit = math.min(limit or #before, #before)
  local pos, known = {}, {}
  for i, call in ipairs(before) do pos[call.call_id] = i end
  for _, call in ipairs(after) do known[call.call_id] = true end
  local seen, dups, unknown, misplaced, beyond, arrived = {}, {}, {}, {}, {}, 0
  local last = 0 -- position in `before` of the last original call yielded
  for i, id in ipairs(got) do
    if seen[id] then
      dups[#dups + 1] = string.format("%s (yielded %d and %d%s)", id, seen[id], i,
        pos[id] and ", call " .. pos[id] .. " of the listing" or ", arrived")
    else
      seen[id] = i
      if pos[id] then
        if pos[id] < last then
          misplaced[#misplaced + 1] = string.format("call %d yielded after call %d", pos[id], last)
        end
        if pos[id] > limit then beyond[#beyond + 1] = pos[id] end
        last = math.max(last, pos[id])
      elseif known[id] then
        arrived = arrived + 1
      else
        unknown[#unknown + 1] = id
      end
    end
  end
  local missing = {}
  for i = 1, limit do
    if not seen[before[i].call_id] then missing[#missing + 1] = i end
  end
  if #missing + #dups + #unknown + #misplaced + #beyond == 0 then return nil end
  local function some(list)
    local shown = {}
    for i = 1, math.min(#list, 5) do shown[i] = tostring(list[i]) end
    return table.concat(shown, "; ") .. (#list > 5 and "; ..." or "")
  end
  local out = { string.format("%d calls yielded (%d of them arrived during the listing) for a listing of %d "
    .. "calls at its start (%d when it ended)%s", #got, arrived, #before, #after,
    limit < #before and ", limit " .. limit or "") }
  if #missing > 0 then
    out[#out + 1] = string.format("%d of the %d calls missing (at positions %s)", #missing, limit, some(missing))
  end
  if #beyond > 0 then
    out[#out + 1] = string.format("%d beyond the first %d (at positions %s)", #beyond, limit, some(beyond))
  end
  if #dups > 0 then out[#out + 1] = string.format("%d yielded twice or more: %s", #dups, some(dups)) end
  if #misplaced > 0 then out[#out + 1] = string.format("%d out of order: %s", #misplaced, some(misplaced)) end
  if #unknown > 0 then out[#out + 1] = string.format("%d not calls of the server: %s", #unknown, some(unknown)) end
  return table.concat(out, "; ")
end

M.json = cjson
return M
