-- Calls arriving at the top of the listing while a cursor pages through it
-- (newest first, so each arrival pushes every older call down): before a
-- retry, while a page is slow, before every page, a random number before
-- each request. Whatever the prefetch, the cursor yields every call the
-- listing had when it started, once each and in order; a call that arrived
-- during the listing may be yielded too, but never twice. The server's
-- arrival knobs are described in spec/support/server.lua.
--
-- With prefetch, what matters is the order in which the server answers the
-- pages in flight: answered in page order, each page is pushed down at least
-- as far as the one before it, and dropping the calls repeated from the
-- previous page is enough. A page answered after a later one (slow, or
-- retried) and after calls arrived is pushed further down than the later
-- page: the calls in between are on neither. The "answered late" scenarios
-- make that happen for sure.
local H = require "spec.support.helper"

local CALLS, PER_PAGE, LIMIT = 500, 50, 120
local PREFETCH = { 0, 1, 4, 16 }

local server

-- The call_ids a cursor yields, and the error that ended it early, if any.
local function collect(client, filters)
  local got = {}
  local ok, err = pcall(function()
    for call in client:calls(filters) do got[#got + 1] = call.call_id end
  end)
  if ok then return got, nil end
  if type(err) == "table" then
    err = string.format("%s: %s", tostring(err.kind), tostring(err.message))
  end
  return got, tostring(err)
end

-- Sets the server up with `arrange`, then pages through the listing with
-- this prefetch. Its calls are taken before the first request (calls arrive
-- only at requests). Fails with the counts of missing and repeated calls.
local function page_through(arrange, prefetch, limit)
  arrange()
  local before = server:calls()
  assert.equal(CALLS, #before) -- nothing arrives before the first request
  local got, err = collect(server:client { prefetch = prefetch }, { per_page = PER_PAGE, limit = limit })
  local problems = H.listing_problems(before, server:calls(), got, limit)
  assert.truthy(not err and not problems, string.format("prefetch %d%s: %s%s", prefetch,
    limit and ", limit " .. limit or "",
    err and "the iteration failed after " .. #got .. " calls: " .. err .. "; " or "",
    problems or "no call missing or repeated"))
  return before, got
end

local function count_status(stats, status)
  local n = 0
  for _, r in ipairs(stats.log) do if r.status == status then n = n + 1 end end
  return n
end

-- 0..25, a seeded series of counts
local function random_counts(seed, n)
  local draw, counts = H.seeded(seed), {}
  for i = 1, n do counts[i] = draw(0, 25) end
  return counts
end

-- Each: a name, how to set the server up, and a check on its stats that
-- the calls did arrive as meant (so that no spec passes on a server whose
-- listing never moved).
local SCENARIOS = {
  {
    "the first request for page 2 gets a 503, and 7 calls arrive before its retry",
    function()
      server:script { { page = 2, status = 503 }, { page = 2, fault = "pass", arrive = 7 } }
    end,
    function(stats)
      assert.equal(7, stats.arrived)
      assert.equal(1, count_status(stats, 503))
    end,
  },
  {
    -- with prefetch 4 or more, page 4 is asked for while page 2 waits
    "page 2 is slow (300 ms), and 7 calls arrive meanwhile (at the first request for page 4)",
    function() server:config { slow_page = 2, slow_ms = 300, burst_page = 4, burst_calls = 7 } end,
    function(stats) assert.equal(7, stats.arrived) end,
  },
  {
    "page 2 is slow (300 ms), and 7 calls arrive while it waits",
    function()
      server:config { slow_page = 2, slow_ms = 300 }
      server:script { { page = 2, fault = "arrive", arrive = 7 } }
    end,
    function(stats) assert.equal(7, stats.arrived) end,
  },
}

-- Calls before each request, the pages answered in order or page 3 late.
local function each_request(name, arrange, arrived)
  for _, late in ipairs { false, true } do
    SCENARIOS[#SCENARIOS + 1] = {
      name .. (late and ", and page 3 is answered late (150 ms)" or ""),
      function()
        arrange()
        if late then server:config { slow_page = 3, slow_ms = 150 } end
      end,
      arrived,
    }
  end
end

each_request("7 calls arrive before each page request",
  function() server:config { arrivals_per_request = 7 } end,
  function(stats) assert.equal(7 * stats.requests, stats.arrived) end)
each_request("20 calls arrive before each page request",
  function() server:config { arrivals_per_request = 20 } end,
  function(stats) assert.equal(20 * stats.requests, stats.arrived) end)
-- one scripted action per request, taken in the order the requests come in
for _, seed in ipairs { 1, 2, 3 } do
  local counts = random_counts(seed, 100)
  each_request("0..25 calls (series of seed " .. seed .. ") arrive before each page request",
    function()
      local script = {}
      for i, k in ipairs(counts) do script[i] = { fault = "arrive", arrive = k } end
      server:script(script)
    end,
    function(stats)
      assert.truthy(stats.requests <= #counts, "more requests than the script: " .. stats.requests)
      local sum = 0
      for i = 1, stats.requests do sum = sum + counts[i] end
      assert.equal(sum, stats.arrived)
      assert.truthy(sum > 0)
    end)
end

-- With limit = 120 (pages 1 to 3), arrivals that leave page 1 alone: the
-- cursor yields exactly the first 120 calls the listing had.
local LIMITED = {
  SCENARIOS[1],
  {
    "page 2 is slow (300 ms), and 7 calls arrive meanwhile (at the first request for page 3)",
    function() server:config { slow_page = 2, slow_ms = 300, burst_page = 3, burst_calls = 7 } end,
    function(stats) assert.equal(7, stats.arrived) end,
  },
  SCENARIOS[3],
  {
    "7 calls arrive before each page request after the first",
    function()
      server:script { { page = 1, fault = "pass" }, { fault = "arrive", arrive = 7, times = 100 } }
    end,
    function(stats) assert.equal(7 * (stats.requests - 1), stats.arrived) end,
  },
}

describe("calls arriving during a listing", function()
  setup(function() server = H.start { calls = CALLS } end)
  teardown(function() server:stop() end)
  before_each(function() server:reset() end)

  it("arrive on the server at the top of the listing, until a reset", function()
    local before = server:calls()
    assert.equal(3, server:arrive(3))
    local after = server:calls()
    assert.equal(CALLS + 3, #after)
    assert.equal(before[1].call_id, after[4].call_id)
    assert.truthy(after[3].created_at > before[1].created_at)
    assert.equal(3, server:arrived())
    server:reset()
    assert.equal(0, server:arrived())
    assert.same(before, server:calls())
  end)

  for _, scenario in ipairs(SCENARIOS) do
    local name, arrange, arrived_as_meant = scenario[1], scenario[2], scenario[3]
    for _, prefetch in ipairs(PREFETCH) do
      it(name .. "; prefetch " .. prefetch .. ": every call once, in order", function()
        page_through(arrange, prefetch)
        arrived_as_meant(server:idle())
      end)
    end
  end

  for _, scenario in ipairs(LIMITED) do
    local name, arrange, arrived_as_meant = scenario[1], scenario[2], scenario[3]
    for _, prefetch in ipairs(PREFETCH) do
      it(name .. "; prefetch " .. prefetch .. ", limit " .. LIMIT .. ": the first " .. LIMIT .. " calls", function()
        local before, got = page_through(arrange, prefetch, LIMIT)
        assert.equal(LIMIT, #got)
        for i = 1, LIMIT do assert.equal(before[i].call_id, got[i]) end
        arrived_as_meant(server:idle())
      end)
    end
  end
end)
