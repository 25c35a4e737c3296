-- examples/eventloop/luv_calls.lua: many listings at once on libuv (luv).
-- Each coroutine waits for its cursor with a uv poll handle on cur:pollfd()
-- and a timer of cur:timeout(); cur:poll() then moves the transfers on.
--
--   lua5.4 examples/eventloop/luv_calls.lua URL [N [PER_PAGE [--spin]]]
--
-- --spin: poll() from an idle handle, again and again (the contrast).
-- OSVI_API_TOKEN gives the token.
local uv = require "luv"
local osvi = require "osvi"

local url, n, per_page, spin = arg[1], tonumber(arg[2] or 100), tonumber(arg[3] or 100), arg[4] == "--spin"
local client = osvi.new { base_url = url, prefetch = 0, timeout = 30 }

-- Resumes the coroutine once its cursor can move on: the descriptor is
-- readable, or the deadline (a libcurl timeout, a retry) is there. One poll
-- handle and one timer per listing, started and stopped for each wait.
local function waiter(cur, co)
  local poll, timer = uv.new_poll(cur:pollfd()), uv.new_timer()
  local function wake()
    poll:stop()
    timer:stop()
    assert(coroutine.resume(co))
  end
  return function() -- waits once
    poll:start("r", wake)
    local timeout = cur:timeout()
    if timeout then timer:start(math.ceil(timeout * 1000), 0, wake) end
    coroutine.yield()
  end, function() -- done with it
    poll:close()
    timer:close()
  end
end

local counts, digests, work = {}, {}, 0
local pages, empty = 0, 0 -- pages handed out; poll() calls that found nothing

-- FNV-1a, carried on over the ids of each page in order
local function digest(h, calls)
  for _, call in ipairs(calls) do
    local id = call.call_id
    for k = 1, #id do h = ((h ~ id:byte(k)) * 16777619) & 0xffffffff end
    h = ((h ~ 10) * 16777619) & 0xffffffff
  end
  return h
end
local idle = spin and uv.new_idle() or nil
local spinning = {}
for i = 1, n do
  local co
  co = coroutine.create(function()
    local cur, got, hash = client:calls { per_page = per_page }, 0, 2166136261
    local wait, done = waiter(cur, co)
    while true do
      local t0 = os.clock()
      local page = cur:poll()
      if page == nil then break end
      if page then
        pages = pages + 1
        got = got + #page.data       -- the work a real program would do here
        hash = digest(hash, page.data)
        work = work + (os.clock() - t0)
      else
        empty = empty + 1
        if spin then
          spinning[co] = true
          coroutine.yield()
        else
          wait()
        end
      end
    end
    done()
    counts[i], digests[i] = got, string.format("%08x", hash)
  end)
  assert(coroutine.resume(co))
end
if idle then -- resume every spinning coroutine on each turn of the loop
  idle:start(function()
    local any = false
    for co in pairs(spinning) do
      any = true
      spinning[co] = nil
      assert(coroutine.resume(co))
    end
    if not any then idle:stop() end
  end)
end

local function cpu_seconds()
  local r = uv.getrusage()
  return r.utime.sec + r.utime.usec / 1e6 + r.stime.sec + r.stime.usec / 1e6
end
local cpu0, wall0 = cpu_seconds(), uv.hrtime()
uv.run()
local wall, cpu = (uv.hrtime() - wall0) / 1e9, cpu_seconds() - cpu0
local min, max, same = math.huge, 0, true
for i = 1, n do
  min, max = math.min(min, counts[i] or 0), math.max(max, counts[i] or 0)
  same = same and digests[i] == digests[1]
end
print(string.format("luv%s: %d listings of %d to %d calls, ids %s; wall %.3f s; CPU %.3f s, "
  .. "of which %.3f s on pages, %.3f s waiting (%.1f%% of the wall time); %d pages, %d polls found nothing",
  spin and " --spin" or "", n, min, max, same and digests[1] or "differ", wall, cpu, work, cpu - work,
  100 * (cpu - work) / wall, pages, empty))
client:close()
