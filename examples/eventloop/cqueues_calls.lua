-- examples/eventloop/cqueues_calls.lua: many listings at once in one cqueues
-- program, none of them blocking the others. A cursor speaks cqueues'
-- pollable protocol (pollfd, events, timeout), so cqueues.poll(cur) waits on
-- it as it is; cur:poll() then moves the transfers on without waiting.
--
--   lua5.4 examples/eventloop/cqueues_calls.lua URL [N [PER_PAGE [--spin]]]
--
-- N coroutines each list every call; at the end a line with the calls each
-- got, a digest of their ids in order (the same for every listing when each
-- got every call once, in order), the wall time and the process's CPU time. --spin calls poll() in a
-- busy loop instead of waiting on the cursor (the contrast: a core burnt).
-- OSVI_API_TOKEN gives the token.
local cqueues = require "cqueues"
local osvi = require "osvi"

local url, n, per_page, spin = arg[1], tonumber(arg[2] or 100), tonumber(arg[3] or 100), arg[4] == "--spin"
local client = osvi.new { base_url = url, prefetch = 0, timeout = 30 }

-- calls per coroutine, digests of their ids, CPU seconds spent on pages;
-- pages handed out, and poll() calls that found nothing
local counts, digests, work = {}, {}, 0
local pages, empty = 0, 0

-- FNV-1a, carried on over the ids of each page in order
local function digest(h, calls)
  for _, call in ipairs(calls) do
    local id = call.call_id
    for k = 1, #id do h = ((h ~ id:byte(k)) * 16777619) & 0xffffffff end
    h = ((h ~ 10) * 16777619) & 0xffffffff
  end
  return h
end

local cq = cqueues.new()
for i = 1, n do
  cq:wrap(function()
    local cur, got, hash = client:calls { per_page = per_page }, 0, 2166136261
    while true do
      local t0 = os.clock()
      local page = cur:poll()        -- a page, false (not in yet) or nil (the end)
      if page == nil then break end
      if page then
        pages = pages + 1
        got = got + #page.data       -- the work a real program would do here
        hash = digest(hash, page.data)
        work = work + (os.clock() - t0)
      else
        empty = empty + 1
        if spin then
          cqueues.sleep(0)           -- the mistake: ask again at once
        else
          cqueues.poll(cur)          -- wait until a transfer can move on
        end
      end
    end
    counts[i], digests[i] = got, string.format("%08x", hash)
  end)
end

local cpu0, wall0 = os.clock(), cqueues.monotime()
assert(cq:loop())
local wall, cpu = cqueues.monotime() - wall0, os.clock() - cpu0
local min, max, same = math.huge, 0, true
for i = 1, n do
  min, max = math.min(min, counts[i] or 0), math.max(max, counts[i] or 0)
  same = same and digests[i] == digests[1]
end
-- os.clock is the process's CPU time (user + system, as getrusage counts it)
print(string.format("cqueues%s: %d listings of %d to %d calls, ids %s; wall %.3f s; CPU %.3f s, "
  .. "of which %.3f s on pages, %.3f s waiting (%.1f%% of the wall time); %d pages, %d polls found nothing",
  spin and " --spin" or "", n, min, max, same and digests[1] or "differ", wall, cpu, work, cpu - work,
  100 * (cpu - work) / wall, pages, empty))
client:close()
