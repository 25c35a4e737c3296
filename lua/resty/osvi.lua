--[[
resty.osvi -- OSVI calls in OpenResty / nginx's Lua module, on cosockets: never blocks the worker.

  local osvi = require "resty.osvi"
  local client = osvi.new { timeout = 10 }          -- token, base URL: OSVI_API_TOKEN, OSVI_BASE_URL
  for call in client:calls { status = "picked", limit = 500 } do ... end   -- raises on failure
  local page, err = client:page { page = 2, per_page = 25 }
  local n, err = client:count { status = "failed" }

The same API, filters, error objects and retry policy as osvi's C client (README.md). This file
is only a transport: what to request, retries and their delays, exactly-once paging and decoding
are osvi's paging core (osvi.core, src/core.c), the same code the C client runs. Here:
- requests go over resty.osvi.http (ngx.socket.tcp, nginx's keepalive pool, TLS verified);
- the core's delays are slept with ngx.sleep;
- prefetch = n: the core keeps up to n pages on their way, each request in a light thread
  (ngx.thread.spawn) that feeds its answer to the core and wakes the iteration (ngx.semaphore);
  prefetch = 0 sends each request from the caller's own coroutine, one at a time, lazily.
Works wherever cosockets do: request handlers (rewrite, access, content), ngx.timer.at, light
threads. Not in init_by_lua, init_worker_by_lua (start a timer), set_by_lua, header/body filters
or log_by_lua, where nginx has no cosockets.
]]

local ngx = ngx
local osvi = require "osvi"            -- the C module, for its paging core (and decoding)
local http = require "resty.osvi.http"
local semaphore = require "ngx.semaphore"

local spawn, kill = ngx.thread.spawn, ngx.thread.kill
local sleep = ngx.sleep
local type, pairs, ipairs, tostring, select = type, pairs, ipairs, tostring, select
local setmetatable, getmetatable, error, pcall = setmetatable, getmetatable, error, pcall
local format, byte, find, sub = string.format, string.byte, string.find, string.sub
local floor = math.floor
local co_status = coroutine.status

local VERSION = osvi._VERSION:match("[%d.]+$") or "0"

local _M = { _VERSION = "resty.osvi " .. VERSION }

-- osvi.Error, the C module's metatable of error objects (kind, message, ...; __tostring), taken
-- from an error it makes: errors made here are the same objects as the core's.
local ERROR_MT = getmetatable(select(2, osvi.decode(400, "")))

local function usage(key, fmt, ...)
  error(setmetatable({ kind = "usage", message = format(fmt, ...), key = key }, ERROR_MT), 0)
end

---------------------------------------------------------------------------------------------
-- Options
---------------------------------------------------------------------------------------------

-- name -> {type, default, min, max}; numbers in seconds unless said otherwise
local NUMBERS = {
  timeout = { 30, 0.001, 86400 },
  connect_timeout = { 10, 0.001, 86400 },
  stall_timeout = { 15, 1, 86400 },
  retry_base = { 0.5, 0, 60 },
  keepalive_timeout = { 60, 0.001, 86400 }, -- how long a pooled connection may stay idle
}
local INTEGERS = {
  max_retries = { 2, 0, 10 },
  prefetch = { 4, 0, 16 },
  max_response_bytes = { 32 * 1024 * 1024, 1024, 2 ^ 40 },
  keepalive_pool = { 16, 1, 10000 },                 -- connections kept per host and port
}
local STRINGS = { token = "OSVI_API_TOKEN", base_url = "OSVI_BASE_URL", user_agent = false }
-- the most bytes of each, as the C client's
local STRING_MAX = { token = 1024, base_url = 4096, user_agent = 1024 }
-- options of the C client that nginx does its own way
local ELSEWHERE = {
  ca_file = "nginx verifies TLS with the CAs of lua_ssl_trusted_certificate in nginx.conf",
  proxy = "resty.osvi connects directly (nginx's cosockets have no proxy support)",
}

local function env(name)
  local v = name and os.getenv(name)
  if v and v ~= "" then return v end
end

local function check_token(t)
  if t == nil then
    usage("token", "no API token: pass token = ... to osvi.new or set OSVI_API_TOKEN "
      .. "(nginx passes it on only with `env OSVI_API_TOKEN;` in nginx.conf)")
  end
  for i = 1, #t do
    local b = byte(t, i)
    if b < 0x21 or b > 0x7e then
      usage("token", "option 'token': expected 16 printable, non-space ASCII characters; character %d is not", i)
    end
  end
  if #t ~= 16 then
    usage("token", "option 'token': expected 16 printable, non-space ASCII characters, got %d characters", #t)
  end
end

local function check_options(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then usage(nil, "osvi.new: expected a table of options, got %s", type(opts)) end
  local o = {}
  for k, v in pairs(opts) do
    if type(k) ~= "string" then usage(nil, "osvi.new: option names are strings, got %s", type(k)) end
    if ELSEWHERE[k] then
      usage(k, "osvi.new: option '%s' is not for resty.osvi: %s", k, ELSEWHERE[k])
    elseif not (NUMBERS[k] or INTEGERS[k] or STRINGS[k] ~= nil or k == "log") then
      usage(k, "osvi.new: unknown option '%s'", k)
    end
    o[k] = v
  end
  -- every string ends up in a request line or a header, where CR or LF would start a header
  -- of the caller's choosing and NUL would cut it short; the value is never shown (it may be
  -- the token)
  for name, envname in pairs(STRINGS) do
    local v, from = o[name], ""
    if v == nil then
      v = env(envname)
      if v ~= nil then from = " (from " .. envname .. ")" end
    end
    if v ~= nil and type(v) ~= "string" then
      usage(name, "option '%s': expected a string, got %s", name, type(v))
    end
    local at = v and find(v, "[%z\1-\31\127]")
    if at then
      usage(name, "option '%s'%s: expected no control characters (CR, LF, NUL, tab, DEL...), got byte 0x%02X "
        .. "at position %d", name, from, byte(v, at), at)
    end
    if v and #v > STRING_MAX[name] then
      usage(name, "option '%s'%s: expected at most %d bytes, got %d", name, from, STRING_MAX[name], #v)
    end
    o[name] = v
  end
  for name, r in pairs(NUMBERS) do
    local v = o[name]
    if v == nil then v = r[1] end
    if type(v) ~= "number" then usage(name, "option '%s': expected a number, got %s", name, type(v)) end
    if not (v >= r[2] and v <= r[3]) then
      usage(name, "option '%s': expected a number from %s to %s, got %s", name, r[2], r[3], tostring(v))
    end
    o[name] = v
  end
  for name, r in pairs(INTEGERS) do
    local v = o[name]
    if v == nil then v = r[1] end
    if type(v) ~= "number" or v ~= floor(v) or not (v >= r[2] and v <= r[3]) then
      usage(name, "option '%s': expected an integer from %d to %d, got %s", name, r[2], r[3], tostring(v))
    end
    o[name] = v
  end
  if o.log == nil then
    local e = env("OSVI_LOG")
    o.log = e ~= nil and e ~= "0"
  elseif type(o.log) ~= "boolean" then
    usage("log", "option 'log': expected a boolean, got %s", type(o.log))
  end
  check_token(o.token)
  o.base_url = o.base_url or "https://api.osvi.ai"
  if find(o.base_url, "[%z\1-\32\127?#]") then
    usage("base_url", "option 'base_url': expected a URL without spaces, query or fragment, got '%s'", o.base_url)
  end
  local target, why = http.target(o.base_url)
  if not target then usage("base_url", "option 'base_url': %s, got '%s'", why, o.base_url) end
  -- osvi adds /v1/calls itself: such a base_url would ask for /v1/v1/calls
  local path = target.prefix
  if sub(path, -3) == "/v1" or sub(path, -9) == "/v1/calls" then
    usage("base_url", "option 'base_url': expected the API's root (such as https://api.osvi.ai), without /v1 "
      .. "or /v1/calls, which osvi adds itself; got '%s'", o.base_url)
  end
  o.target = target
  if o.user_agent == nil then
    local v = ngx.config and ngx.config.ngx_lua_version or 0
    o.user_agent = format("osvi-lua/%s resty.osvi ngx_lua/%d.%d.%d %s", VERSION,
      floor(v / 1000000), floor(v / 1000) % 1000, v % 1000, jit and jit.version or _VERSION)
  end
  return o
end

---------------------------------------------------------------------------------------------
-- The client
---------------------------------------------------------------------------------------------

-- A client's state, out of the caller's sight: the token lives only in `head` (the request
-- headers) and is never in a message, a log line or tostring().
local state = setmetatable({}, { __mode = "k" })

local Client = {}
Client.__index = Client
Client.__tostring = function(self)
  local st = state[self]
  return format("resty.osvi.Client (%s, %s)%s", st.id, st.base_url, st.closed and " closed" or "")
end

--- osvi.new([options]) -> client; raises a usage error for a bad option.
function _M.new(opts)
  local o = check_options(opts)
  local self = {}
  local id = tostring(self):match("0x%x+") or "?"
  local prefix = o.target.prefix
  local st = {
    id = id,
    base_url = o.target.scheme .. "://" .. o.target.host_header .. prefix,
    target = o.target,
    path = prefix .. "/v1/calls",
    head = " HTTP/1.1\r\nHost: " .. o.target.host_header .. "\r\nAPI-Token: " .. o.token
      .. "\r\nAccept: application/json\r\nUser-Agent: " .. o.user_agent .. "\r\n\r\n",
    http = {
      timeout = o.timeout, connect_timeout = o.connect_timeout, stall_timeout = o.stall_timeout,
      max_bytes = o.max_response_bytes, keepalive_timeout = o.keepalive_timeout,
      keepalive_pool = o.keepalive_pool,
    },
    policy = { prefetch = o.prefetch, max_retries = o.max_retries, retry_base = o.retry_base },
    one = { one = true, max_retries = o.max_retries, retry_base = o.retry_base },
    count = { count = true, max_retries = o.max_retries, retry_base = o.retry_base },
    prefetch = o.prefetch,
    log = o.log,
  }
  state[self] = st
  return setmetatable(self, Client)
end

local function open_state(self)
  local st = type(self) == "table" and state[self]
  if not st then usage(nil, "expected a resty.osvi client (client:method(...), not client.method(...))") end
  if st.closed then usage(nil, "the client is closed") end
  return st
end

--- client:close(): later use raises a usage error. Connections stay in nginx's pool.
function Client:close()
  local st = state[self]
  if st then st.closed = true end
end

-- One request of the core, sent and its outcome fed back to the core.
local function perform(st, core, r)
  local path = r.query ~= "" and st.path .. "?" .. r.query or st.path
  local started
  if st.log then
    ngx.update_time()
    started = ngx.now()
  end
  local res, kind, message, retryable, sends, status =
    http.get(st.target, { "GET ", path, st.head }, st.http, r.budget)
  if st.log then
    ngx.update_time()
    ngx.log(ngx.NOTICE, format("osvi: GET %s -> %s, attempt %d, %s, %.1f ms", path,
      res and res.status or "failed (" .. kind .. ": " .. message .. ")", r.attempt,
      res and #res.body .. " bytes" or "no answer", (ngx.now() - started) * 1000))
  end
  if res then
    core:answer(r.id, res.status, res.body, res.retry_after, nil, res.sends)
  else
    core:failed(r.id, kind, message, retryable, nil, sends, status)
  end
end

-- Runs a one-page core (page(), count()) to its answer: the page, or nil and the error.
local function run_one(st, core)
  while true do
    local page, err = core:next_page()
    if page ~= false then return page, err end
    local sent = 0
    for _, r in ipairs(core:requests()) do
      perform(st, core, r)
      sent = sent + 1
    end
    if sent == 0 then
      local t = core:timeout()
      if not t then return nil, setmetatable({ kind = "usage", message = "nothing left to ask for" }, ERROR_MT) end
      sleep(t)
    end
  end
end

--- client:page([filters]) -> {data, meta, fetch} | nil, err. A bad filter raises (usage).
function Client:page(filters)
  local st = open_state(self)
  return run_one(st, osvi.core(filters, st.one))
end

--- client:count([filters]) -> meta.total_count | nil, err (one request for one call).
function Client:count(filters)
  local st = open_state(self)
  local page, err = run_one(st, osvi.core(filters, st.count))
  if not page then return nil, err end
  return page.meta.total_count
end

---------------------------------------------------------------------------------------------
-- The cursor: client:calls(filters)
---------------------------------------------------------------------------------------------

local Cursor = {}
local cursor_methods = {}

Cursor.__index = function(cur, key)
  if key == "stats" then return cur._core.stats end
  if key == "meta" then return cur._core.meta end
  return cursor_methods[key]
end
Cursor.__tostring = function(cur)
  return cur._closed and "resty.osvi.Cursor (closed)" or "resty.osvi.Cursor (" .. cur._id .. ")"
end

-- A light thread: one request, its outcome to the core, and a wake-up for the iteration.
local function thread_main(cur, r)
  local core = cur._core
  local ok, err = pcall(perform, cur._st, core, r)
  if not ok then
    -- a bug or out of memory here must not leave the core waiting for an answer forever
    pcall(core.failed, core, r.id, "network", "resty.osvi: " .. tostring(err), false)
  end
  cur._threads[r.id] = nil
  cur._running = cur._running - 1
  cur._sema:post(1)
end

-- Sends what the core has to send now: in light threads with prefetch, else one after another
-- from this coroutine. Returns how many were sent.
local function launch(cur)
  local core, n = cur._core, 0
  for _, r in ipairs(core:requests()) do
    n = n + 1
    if cur._sema then
      cur._running = cur._running + 1
      local th, err = spawn(thread_main, cur, r)
      if not th then
        cur._running = cur._running - 1
        core:failed(r.id, "network", "resty.osvi: cannot start a light thread: " .. tostring(err), false)
      elseif co_status(th) ~= "dead" then
        cur._threads[r.id] = th -- waiting on its socket: killed by close()
      end
    else
      perform(cur._st, core, r)
    end
  end
  return n
end

local function close(cur)
  if cur._closed then return end
  cur._closed = true
  cur._data, cur._index, cur._count = nil, 0, 0
  for id, th in pairs(cur._threads) do
    kill(th) -- the transfers in flight: no longer wanted (fails only outside their parent)
    cur._threads[id] = nil
  end
end

-- The next page from the core: the page, or nil at the end; raises the error of a failure.
local function step(cur)
  local core = cur._core
  while true do
    if cur._closed then return nil end
    if state[cur._client].closed then usage(nil, "the client is closed") end
    local page, err = core:next_page()
    if page then
      if cur._sema then launch(cur) end -- the pages after it on their way while the caller works
      return page
    end
    if page == nil then
      if err then error(err, 0) end
      close(cur)
      return nil
    end
    local sent = launch(cur)
    if cur._running > 0 then
      -- wait for an answer, or until a retry is due
      cur._sema:wait(core:timeout() or 3600)
    elseif sent == 0 then
      local t = core:timeout()
      if not t then
        error(setmetatable({ kind = "usage", message = "the listing has nothing left to ask for" }, ERROR_MT), 0)
      end
      if t > 0 then sleep(t) end
    end
  end
end

--- cur:next_page() -> {data, meta, fetch} | nil after the last page. Raises on failure; the
--- same page can then be asked for again.
function cursor_methods.next_page(cur)
  local page = step(cur)
  cur._data, cur._index, cur._count = nil, 0, 0
  return page
end

--- cur:close(): stops the requests in flight (their light threads); safe twice.
function cursor_methods.close(cur)
  close(cur)
end

-- the for loop's step: the next call, nil at the end; raises on failure
Cursor.__call = function(cur)
  while true do
    local i = cur._index
    if i < cur._count then
      i = i + 1
      cur._index = i
      return cur._data[i]
    end
    local page = step(cur)
    if not page then return nil end
    cur._data, cur._index, cur._count = page.data, 0, #page.data
  end
end

--- client:calls([filters]) -> cursor, nil, nil, cursor: `for call in client:calls(f) do`.
--- A bad filter raises (usage); iteration raises any failure.
function Client:calls(filters)
  local st = open_state(self)
  local core = osvi.core(filters, st.policy)
  local cur = {
    _core = core, _st = st, _client = self, _index = 0, _count = 0, _running = 0,
    _threads = {}, _closed = false,
    _sema = st.prefetch > 0 and semaphore.new(0) or nil,
  }
  cur._id = tostring(cur):match("0x%x+") or "?"
  setmetatable(cur, Cursor)
  return cur, nil, nil, cur
end

---------------------------------------------------------------------------------------------
-- A default client per worker, from the environment, as osvi.calls / osvi.page / osvi.count
---------------------------------------------------------------------------------------------

local default

local function default_client()
  default = default or _M.new()
  return default
end

function _M.calls(filters) return default_client():calls(filters) end
function _M.page(filters) return default_client():page(filters) end
function _M.count(filters) return default_client():count(filters) end

return _M
