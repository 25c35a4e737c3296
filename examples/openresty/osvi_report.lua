--[[
examples/openresty/osvi_report.lua -- OSVI call reports served by nginx, with resty.osvi.

  M.calls()    content_by_lua: lists the calls matching the request's query arguments (any filter
               of osvi's, e.g. /calls?status=picked,voicemail&start_date=2026-06-01) and answers
               a summary. The handler yields on its sockets, so the worker serves other requests
               meanwhile; with prefetch, the pages after the first are fetched in light threads.
  M.start(s)   init_worker_by_lua: a timer (ngx.timer.every) that refreshes a report every s
               seconds into the lua_shared_dict `osvi`, and once at start.
  M.report()   content_by_lua: that report, as the timer last made it.
  M.refresh()  content_by_lua: refreshes it now, in a timer (answers 202 at once).

The token and the API's address come from the environment (OSVI_API_TOKEN, OSVI_BASE_URL), which
nginx passes on only with `env OSVI_API_TOKEN; env OSVI_BASE_URL;` in nginx.conf.
]]

local osvi = require "resty.osvi"
local cjson = require "cjson.safe"

local M = {}

-- The HTTP status this server answers for an osvi error kind; anything else is 502: the API
-- failed us (auth and forbidden mean our token is wrong, not the caller's request).
local HTTP_STATUS = { usage = 400, validation = 422, not_found = 404, rate_limited = 429, timeout = 504 }

-- One client per worker: it holds only settings (connections live in nginx's pool).
local client
local function get_client()
  client = client or osvi.new { timeout = 10, connect_timeout = 3, prefetch = 4 }
  return client
end

local function reply(status, value)
  local body = cjson.encode(value)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #body
  ngx.print(body)
end

-- Answers an osvi error with its kind and message (never a token: osvi's messages carry none).
local function fail(err)
  if type(err) ~= "table" then err = { kind = "internal", message = tostring(err) } end
  if err.retry_after then ngx.header["Retry-After"] = err.retry_after end
  return reply(HTTP_STATUS[err.kind] or (err.kind == "internal" and 500 or 502), {
    error = err.kind, message = err.message, upstream_status = err.status, key = err.key, errors = err.errors,
  })
end

-- The filters: the query arguments as they are (osvi checks them all and names a bad one;
-- numbers may come as strings of digits). More than 32 is an error: nginx would drop the rest,
-- and a dropped filter widens the answer.
local function filters_from_args()
  local args, err = ngx.req.get_uri_args(32)
  if err == "truncated" then
    return nil, { kind = "usage", message = "too many query arguments (at most 32)" }
  end
  return args
end

--- Every call matching `filters`, summarised: {count, pages, by_status, by_agent, ids_md5 (of
--- the call ids in order, one per line), minutes}. Raises osvi's error on failure.
function M.summary(filters)
  local s = { count = 0, by_status = {}, by_agent = {}, minutes = 0 }
  local ids = {}
  local cur = get_client():calls(filters)
  for call in cur do
    s.count = s.count + 1
    ids[s.count] = call.call_id
    s.by_status[call.status] = (s.by_status[call.status] or 0) + 1
    if call.agent_name then s.by_agent[call.agent_name] = (s.by_agent[call.agent_name] or 0) + 1 end
    s.minutes = s.minutes + (call.duration_seconds or 0) / 60
  end
  s.pages = cur.stats.pages
  s.ids_md5 = ngx.md5(table.concat(ids, "\n"))
  return s
end

--- GET /calls?<filters>
function M.calls()
  local filters, bad = filters_from_args()
  if not filters then return fail(bad) end
  local ok, result = pcall(M.summary, filters)
  if not ok then return fail(result) end
  return reply(200, result)
end

-- The timer's job: the report of every call, kept in the shared dict. One at a time per
-- nginx (a lock in the dict), whoever starts it.
local function refresh_job(premature)
  if premature then return end -- nginx is shutting down
  local dict = ngx.shared.osvi
  if not dict:add("lock", true, 600) then return end -- another refresh runs
  ngx.update_time()
  local started = ngx.now()
  local ok, result = pcall(M.summary, {})
  ngx.update_time()
  if ok then
    result.state = "done"
  else
    local err = type(result) == "table" and result or { kind = "internal", message = tostring(result) }
    ngx.log(ngx.ERR, "osvi report: ", tostring(result))
    result = { state = "failed", error = err.kind, message = err.message }
  end
  result.refreshed_at = ngx.now()
  result.elapsed = ngx.now() - started
  dict:set("report", cjson.encode(result))
  dict:delete("lock")
end

--- init_worker_by_lua: refresh every `interval` seconds, and now. Only worker 0 does it.
function M.start(interval)
  if ngx.worker.id() ~= 0 then return end
  assert(ngx.timer.at(0, refresh_job))
  assert(ngx.timer.every(interval, refresh_job))
end

--- GET /report: the last report (200), or 202 before the first one is in.
function M.report()
  local text = ngx.shared.osvi:get("report")
  if not text then return reply(202, { state = "running" }) end
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #text
  ngx.print(text)
end

--- POST /report/refresh: a refresh now, in a timer; answers at once.
function M.refresh()
  local ok, err = ngx.timer.at(0, refresh_job)
  if not ok then return fail("cannot start the timer: " .. tostring(err)) end
  return reply(202, { state = "running" })
end

return M
