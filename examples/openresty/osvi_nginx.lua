--[[
examples/openresty/osvi_nginx.lua -- listing OSVI calls inside nginx (lua-nginx-module, LuaJIT).

Two ways, see README.md beside this file:

  M.calls()           content_by_lua: NON-BLOCKING. Each page travels through nginx's own I/O
                      (a subrequest to the internal location /_osvi_upstream/, which proxies to the
                      API and adds the token); osvi only checks the filters and builds the query
                      (osvi.query) and decodes and normalises each page (osvi.decode). While a page
                      is on its way the handler yields and the worker serves other requests.

  M.refresh_job()     ngx.timer.at: the plain BLOCKING client (osvi.new{}:count(), :calls()).
                      libcurl waits inside the worker process, so nothing else on that worker runs
                      until it returns: fine for a short background job, never for a handler.

  M.calls_blocking()  the blocking client inside a handler: the ANTI-PATTERN, kept only so that
                      run.sh can show that it serialises the requests of a worker.

The token and the base URL come from the environment (OSVI_API_TOKEN, OSVI_BASE_URL: nginx.conf
lists both with `env`), the way osvi.new{} reads them. The token is never logged or answered.
]]

local osvi = require "osvi"
local cjson = require "cjson.safe"

local M = {}

local UPSTREAM = "/_osvi_upstream/v1/calls?" -- the internal proxy location in nginx.conf
local PER_PAGE = 100                          -- the API's maximum
local MAX_RETRIES = 2                         -- as the built-in transport's default
local RETRYABLE = { rate_limited = true, server = true, timeout = true, network = true }

-- The HTTP status this server answers for an osvi error kind; anything else is 502 (the
-- API failed us: auth and forbidden mean our token is wrong, not the caller's request).
local HTTP_STATUS = { usage = 400, validation = 422, not_found = 404, rate_limited = 429,
                      timeout = 504 }

-- For the API-Token header of the proxy location (set_by_lua in nginx.conf).
function M.token()
  return os.getenv("OSVI_API_TOKEN") or ""
end

local function reply(status, value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(value))
end

-- Answers an osvi error (or a plain message) with its kind, never a token: osvi's messages
-- carry none.
local function fail(err)
  if type(err) ~= "table" then err = { kind = "internal", message = tostring(err) } end
  if err.retry_after then ngx.header["Retry-After"] = err.retry_after end
  return reply(HTTP_STATUS[err.kind] or (err.kind == "internal" and 500 or 502), {
    error = err.kind, message = err.message, upstream_status = err.status, key = err.key,
    errors = err.errors,
  })
end

-- The filters: the request's query arguments as they are (osvi.query checks them all, names a
-- bad one, and takes page and per_page as strings of digits). Returns nil and a usage error when
-- there are too many to read them all: nginx would drop the rest, and a dropped filter widens
-- the answer.
local function filters_from_args()
  local args, err = ngx.req.get_uri_args(32)
  if err == "truncated" then
    return nil, { kind = "usage", message = "too many query arguments (at most 32)" }
  end
  return args
end

-- count, calls per status, pages and an MD5 of the call ids (in order, one per line), so that a
-- test can compare two ways of listing and the server's own data.
local function summary()
  local s = { count = 0, by_status = {}, pages = 0 }
  local ids = {}
  function s.add(call)
    s.count = s.count + 1
    s.by_status[call.status] = (s.by_status[call.status] or 0) + 1
    ids[s.count] = call.call_id
  end
  function s.result()
    return { count = s.count, by_status = s.by_status, pages = s.pages,
             ids_md5 = ngx.md5(table.concat(ids, "\n")) }
  end
  return s
end

---------------------------------------------------------------------------------------------
-- (1) Non-blocking: nginx fetches, osvi checks, builds and decodes.
---------------------------------------------------------------------------------------------

-- Seconds from a Retry-After header (delta-seconds or an HTTP date), or nil: osvi.decode takes
-- an integer, as the built-in transport passes it.
local function retry_after(value)
  if type(value) == "table" then value = value[1] end
  if type(value) ~= "string" then return nil end
  local s = tonumber(value)
  if not s then
    local t = ngx.parse_http_time(value)
    s = t and math.max(0, t - ngx.time())
  end
  return s and s >= 0 and math.floor(s) or nil
end

-- One page: a subrequest (yields until the response is in), then osvi.decode.
local function fetch(query)
  local res = ngx.location.capture(UPSTREAM .. query)
  if res.truncated then -- the upstream closed in the middle of the body
    return nil, { kind = "network", status = res.status, message = "the body was cut off" }
  end
  return osvi.decode(res.status, res.body or "", retry_after(res.header["Retry-After"]))
end

-- One page with the built-in transport's retry rule: retryable kinds, backoff 0.5 s, 1 s or
-- the server's Retry-After; ngx.sleep yields as well.
local function fetch_with_retries(query)
  local page, err
  for attempt = 1, 1 + MAX_RETRIES do
    page, err = fetch(query)
    if page or not RETRYABLE[err.kind] or attempt > MAX_RETRIES then break end
    local delay = err.retry_after or 0.5 * 2 ^ (attempt - 1)
    if delay > 10 then break end -- not worth holding the client's request for
    ngx.sleep(delay)
  end
  return page, err
end

-- Calls on_call(call) for every call matching `filters`, page after page, as client:calls()
-- would: stops at the last page or an empty one, and drops a call already seen on the previous
-- page (new calls arriving at the top shift older ones down). Returns the number of pages read,
-- or nil and an error (a `usage` error for a bad filter, before any request).
function M.each_call(filters, on_call)
  local ok, bad = pcall(osvi.query, filters) -- checks every filter: raises a usage error
  if not ok then return nil, bad end
  filters.per_page = filters.per_page or PER_PAGE
  local page_no, pages, max_pages, previous = tonumber(filters.page) or 1, 0, nil, {}
  while true do
    filters.page = page_no
    local page, err = fetch_with_retries(osvi.query(filters))
    if not page then return nil, err end
    pages = pages + 1
    local ids = {}
    for _, call in ipairs(page.data) do
      if not previous[call.call_id] then on_call(call) end
      ids[call.call_id] = true
    end
    previous = ids
    local meta = page.meta
    if #page.data == 0 or meta.current_page >= meta.total_pages then return pages end
    -- as the cursor does: a total_pages that keeps growing must not page forever
    max_pages = max_pages or 2 * meta.total_pages + 10
    if pages >= max_pages then
      return nil, { kind = "decode", message = "total_pages keeps growing" }
    end
    page_no = page_no + 1
  end
end

-- GET /calls?status=picked&...: every matching call, summarised (see summary()).
function M.calls()
  local filters, bad = filters_from_args()
  if not filters then return fail(bad) end
  local s = summary()
  local pages, err = M.each_call(filters, s.add)
  if not pages then return fail(err) end
  s.pages = pages
  return reply(200, s.result())
end

---------------------------------------------------------------------------------------------
-- (2) Blocking: the plain client, where waiting inside the worker is acceptable.
---------------------------------------------------------------------------------------------

-- Lists with the built-in client (libcurl, prefetching pages); with_count adds meta.total_count
-- from client:count(). Returns the summary, or nil and an osvi error.
local function summarise_blocking(filters, with_count)
  -- token and base URL from the environment; short limits, as every second of waiting here is a
  -- second of the whole worker
  local ok, client = pcall(osvi.new, { timeout = 5, connect_timeout = 2, max_retries = 1 })
  if not ok then return nil, client end
  local s = summary()
  local result
  ok, result = pcall(function()
    local cur = client:calls(filters) -- raises on failure, like next_page()
    while true do
      local page = cur:next_page()
      if not page then break end
      s.pages = s.pages + 1
      for _, call in ipairs(page.data) do s.add(call) end
    end
    local r = s.result()
    if with_count then
      local n, err = client:count(filters)
      if not n then error(err, 0) end
      r.total_count = n
    end
    return r
  end)
  client:close()
  if not ok then return nil, result end
  return result
end

-- The timer's job. It BLOCKS THIS WORKER for as long as it runs (a few round trips): requests
-- that reach the worker meanwhile wait (run.sh measures it). Keep such jobs short and rare,
-- with a short timeout; for anything longer run the CLI (osvi-calls) from cron instead.
function M.refresh_job(premature, filters)
  if premature then return end -- nginx is shutting down
  local started = ngx.now()
  local result, err = summarise_blocking(filters, true)
  ngx.update_time()
  if result then
    result.state = "done"
  else
    if type(err) ~= "table" then err = { kind = "internal", message = tostring(err) } end
    result = { state = "failed", error = err.kind, message = err.message }
  end
  result.elapsed = ngx.now() - started
  ngx.shared.osvi:set("report", cjson.encode(result))
end

-- POST /report/refresh: schedules the job and answers at once (202).
function M.refresh()
  local filters, bad = filters_from_args()
  if not filters then return fail(bad) end
  local ok, err = pcall(osvi.query, filters) -- a bad filter is a 400 now, not a failed job
  if not ok then return fail(err) end
  ngx.shared.osvi:set("report", '{"state":"running"}')
  local started, timer_err = ngx.timer.at(0, M.refresh_job, filters)
  if not started then return fail("cannot start the timer: " .. tostring(timer_err)) end
  return reply(202, { state = "running" })
end

-- GET /report: the timer's last result (200), 202 while it runs, 404 before the first run.
function M.report()
  local text = ngx.shared.osvi:get("report")
  if not text then return reply(404, { state = "none" }) end
  local value = cjson.decode(text)
  return reply(value.state == "running" and 202 or 200, value)
end

-- GET /calls-blocking: DON'T DO THIS. The blocking client inside a request handler stalls the
-- whole worker: every other request on it (all of them, with worker_processes 1) waits until
-- this one's pages are in. Here only to show that contrast.
function M.calls_blocking()
  local filters, bad = filters_from_args()
  if not filters then return fail(bad) end
  local result, err = summarise_blocking(filters, false)
  if not result then return fail(err) end
  return reply(200, result)
end

return M
