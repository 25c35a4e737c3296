-- examples/embed/tick.lua: run by host.c. It gets the host's settings as
-- `...` and returns {tick, pump, pollfd, timeout, summary}.
--
-- By default the host waits on the cursor's descriptor (pollfd) and deadline
-- (timeout) beside its own tick, and calls pump() when osvi has something:
-- pump() takes one step that never waits, cur:poll(), which returns the next
-- page when it is in, false while it is still on its way, nil after the last
-- page. tick() is then the host's own work (here: nothing).
--
-- With --tick-poll the host calls tick() every frame and tick() polls; with
-- --blocking (the mistake this example exists to avoid) tick() calls
-- cur:next_page(), which waits for the page, and the frame waits with it.
-- A failure raises; the host reports it.

local cfg = ...
local osvi = require "osvi" -- already loaded by the host (luaL_requiref)
local socket = require "socket"
local http = require "socket.http"
local cjson = require "cjson"

local client = osvi.new { base_url = cfg.url, token = cfg.token, prefetch = cfg.prefetch }
local cur = client:calls { per_page = cfg.per_page }
local step = cfg.blocking and cur.next_page or cur.poll

local calls, pages, total, waiting = 0, 0, nil, 0
local by_status = {}
local delivered = {} -- page number -> when its calls reached the host (epoch s)

-- One step: returns done, and how many pages reached the host (0 or 1).
local function pump()
  local page = step(cur)
  if page == nil then return true, 0 end -- after the last page: done
  if page == false then                  -- not in yet
    waiting = waiting + 1
    return false, 0
  end
  pages = pages + 1
  total = page.meta.total_count
  delivered[page.meta.current_page] = socket.gettime()
  for _, call in ipairs(page.data) do
    calls = calls + 1
    by_status[call.status] = (by_status[call.status] or 0) + 1
  end
  return false, 1
end

local tick
if cfg.tick_poll then
  tick = pump
else
  tick = function() end -- the host's own work of a frame
end

-- Each page's delay from the local server sending it (its log's "sent") to
-- its calls reaching the host: median and 99th percentile, in ms.
local function delays()
  local body = http.request(cfg.url .. "/_control/stats")
  local ok, stats = pcall(cjson.decode, body or "")
  if not ok or type(stats) ~= "table" then return end
  local d = {}
  for _, entry in ipairs(stats.log) do
    local p = tonumber((entry.query or ""):match("page=(%d+)"))
    if p and delivered[p] and type(entry.sent) == "number" then
      d[#d + 1] = (delivered[p] - entry.sent) * 1000
    end
  end
  table.sort(d)
  if #d == 0 then return end
  return d[math.ceil(#d / 2)], d[math.ceil(#d * 0.99)], #d
end

-- calls received, pages, meta.total_count, polls that found no page in yet
local function summary()
  local median, p99, n = delays()
  if median then
    print(string.format("page delay (sent by the server -> calls in the host): "
      .. "median %.3f ms, p99 %.3f ms over %d pages", median, p99, n))
  end
  local names = {}
  for name in pairs(by_status) do names[#names + 1] = name end
  table.sort(names)
  for i, name in ipairs(names) do names[i] = name .. " " .. by_status[name] end
  print("by status: " .. table.concat(names, ", "))
  client:close()
  return calls, pages, total, waiting
end

return {
  tick = tick,
  pump = pump,
  pollfd = function() return cur:pollfd() end,
  timeout = function() return cur:timeout() end,
  summary = summary,
}
