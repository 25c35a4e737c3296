--[[
spec/support/resty_harness.lua -- the handlers that spec/resty_spec.lua drives inside nginx
(spec/support/nginx.lua writes the configuration). Each runs resty.osvi as an OpenResty user
would and answers JSON, so that the spec (under any Lua, with luasocket) can compare with the C
client in its own process.

  POST /run     {op = "calls" | "page" | "count" | "pages", options = {...}, filters = {...},
                 ids = true (calls: only the call_ids), count_only = true (calls: only how many,
                 as n), break_after = N (calls: stop, close)}
                -> {calls | ids | page | count | pages, error = {kind, status, message, ...},
                    tostring = tostring(error), stats, meta, unchanged = the caller's tables were
                    left as they were, elapsed}
  POST /timer   the same job in ngx.timer.at (answers at once); GET /timer/result: its answer
  POST /thread  the same job in a light thread, N of them at once ({jobs = [spec, ...]})
  GET  /ping    "pong", from Lua: the worker's Lua VM is free
  GET  /pid     the worker's pid
]]
-- luacheck: globals ngx

local cjson = require "cjson.safe"
local osvi = require "resty.osvi"

local M = {}

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, x in pairs(a) do if not same(x, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function plain_error(err)
  if type(err) ~= "table" then return { kind = "lua", message = tostring(err) } end
  return {
    kind = err.kind, status = err.status, message = err.message, attempts = err.attempts,
    retry_after = err.retry_after, errors = err.errors, key = err.key,
  }
end

local function now()
  ngx.update_time()
  return ngx.now()
end

-- Runs one job (a decoded /run body): returns the answer table.
function M.job(spec)
  local options, filters = spec.options or {}, spec.filters
  local before_o, before_f = copy(options), copy(filters)
  local out = {}
  local t0 = now()
  local ok, err = pcall(function()
    local client = osvi.new(options)
    if spec.op == "calls" or spec.op == "pages" then
      local cur = client:calls(filters)
      out.cursor = tostring(cur)
      local list, n = {}, 0
      out[spec.ids and "ids" or (spec.op == "pages" and "pages" or "calls")] = list
      local body_ok, body_err = pcall(function()
        if spec.op == "pages" then
          while true do
            local page = cur:next_page()
            if not page then break end
            n = n + 1
            list[n] = { n = #page.data, meta = page.meta, fetch = page.fetch }
          end
        else
          for call in cur do
            n = n + 1
            if not spec.count_only then list[n] = spec.ids and call.call_id or call end
            if spec.break_after and n >= spec.break_after then break end
          end
          out.n = n
        end
      end)
      cur:close()
      out.stats, out.meta = cur.stats, cur.meta
      if not body_ok then error(body_err, 0) end
    elseif spec.op == "page" then
      local page, e = client:page(filters)
      out.page = page
      if not page then error(e, 0) end
    elseif spec.op == "count" then
      local n, e = client:count(filters)
      out.count = n
      if not n then error(e, 0) end
    else
      error("unknown op " .. tostring(spec.op))
    end
    out.client = tostring(client)
  end)
  if not ok then
    out.error = plain_error(err)
    out.tostring = tostring(err)
  end
  out.elapsed = now() - t0
  out.unchanged = same(options, before_o) and same(filters, before_f)
  return out
end

local function reply(status, value)
  local body = assert(cjson.encode(value))
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #body
  ngx.print(body)
end

local function read_spec()
  ngx.req.read_body()
  local spec = cjson.decode(ngx.req.get_body_data() or "")
  if type(spec) ~= "table" then return nil end
  return spec
end

function M.run()
  local spec = read_spec()
  if not spec then return reply(400, { error = "body: a JSON object" }) end
  return reply(200, M.job(spec))
end

-- The timer's job: runs in ngx.timer.at (no request), its answer kept in a shared dict.
local function timer_job(premature, spec)
  if premature then return end
  local out = M.job(spec)
  out.in_timer = true
  ngx.shared.harness:set("timer", cjson.encode(out))
end

function M.timer()
  local spec = read_spec()
  ngx.shared.harness:delete("timer")
  local ok, err = ngx.timer.at(0, timer_job, spec)
  if not ok then return reply(500, { error = err }) end
  return reply(202, { started = true })
end

function M.timer_result()
  local text = ngx.shared.harness:get("timer")
  if not text then return reply(202, { running = true }) end
  ngx.status = 200
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #text
  ngx.print(text)
end

-- Several jobs, each in a light thread of this request, waited for together.
function M.thread()
  local spec = read_spec()
  local threads = {}
  local t0 = now()
  for i, job in ipairs(spec.jobs) do
    threads[i] = ngx.thread.spawn(M.job, job)
  end
  local out = { results = {} }
  for i, th in ipairs(threads) do
    local ok, res = ngx.thread.wait(th)
    out.results[i] = ok and res or { error = { kind = "lua", message = tostring(res) } }
  end
  out.elapsed = now() - t0
  return reply(200, out)
end

function M.ping()
  ngx.header["Content-Length"] = 5
  ngx.print("pong\n")
end

function M.pid()
  return reply(200, { pid = ngx.worker.pid() })
end

return M
