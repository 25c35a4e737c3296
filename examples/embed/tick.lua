-- examples/embed/tick.lua: run by host.c. It gets the host's settings as
-- `...` and returns {tick = ..., summary = ...}; the host calls tick() once
-- per frame until it returns true.
--
-- tick() takes one non-blocking step: cur:poll() returns the next page when
-- it is in, false while it is still on its way (libcurl's multi interface
-- moves the transfers on inside poll), nil after the last page. A failure
-- raises, like next_page() does; the host reports it.

local cfg = ...
local osvi = require "osvi" -- already loaded by the host (luaL_requiref)

local client = osvi.new { base_url = cfg.url, token = cfg.token, prefetch = cfg.prefetch }
local cur = client:calls { per_page = cfg.per_page }

-- --blocking: the mistake this example exists to avoid. next_page() waits
-- for the page, so the frame waits with it.
local step = cfg.blocking and cur.next_page or cur.poll

local calls, pages, total, waiting = 0, 0, nil, 0
local by_status = {}

local function tick()
  local page = step(cur)
  if page == nil then return true end -- after the last page: done
  if page == false then               -- not in yet: nothing to do this frame
    waiting = waiting + 1
    return false
  end
  pages = pages + 1
  total = page.meta.total_count
  for _, call in ipairs(page.data) do
    calls = calls + 1
    by_status[call.status] = (by_status[call.status] or 0) + 1
  end
  return false
end

-- calls received, pages, meta.total_count, ticks that found no page in yet
local function summary()
  local names = {}
  for name in pairs(by_status) do names[#names + 1] = name end
  table.sort(names)
  for i, name in ipairs(names) do names[i] = name .. " " .. by_status[name] end
  print("by status: " .. table.concat(names, ", "))
  client:close()
  return calls, pages, total, waiting
end

return { tick = tick, summary = summary }
