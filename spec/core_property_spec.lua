-- The paging core alone (osvi.core), no sockets: a simulated API where calls
-- arrive at random moments, requests are answered and delivered in random
-- order, with random 429s, 5xx and resets and their retries, prefetch 0-16,
-- per_page 1-100, with and without limit. Each seeded schedule checks that
-- the calls handed out are exactly the calls of the listing when it started,
-- in order, none twice. A failure names its seed:
--   OSVI_PROPERTY_SEED=1234 busted --lua=lua5.4 spec/core_property_spec.lua
-- OSVI_PROPERTY_RUNS sets how many schedules (10000 by default).
local H = require "spec.support.helper"
local osvi = require "osvi"

local RUNS = tonumber(os.getenv("OSVI_PROPERTY_RUNS") or "") or 10000
local ONLY = tonumber(os.getenv("OSVI_PROPERTY_SEED") or "")

-- xorshift32 on doubles-safe arithmetic (every Lua version): a generator of
-- integers in [0, 2^31)
local function new_rng(seed)
  local x = (seed * 2654435761 + 12345) % 2147483647
  if x == 0 then x = 1 end
  return function(lo, hi)
    x = (x * 48271) % 2147483647 -- Lehmer: exact in doubles
    return lo + x % (hi - lo + 1)
  end
end

-- what the schedules did, over all of them
local totals = { calls = 0, requests = 0, arrived = 0, failures = 0, rereads = 0, resyncs = 0 }

local ITEM = setmetatable({}, {
  __index = function(t, id)
    local s = '{"call_id":"' .. id .. '"}'
    t[id] = s
    return s
  end,
})

-- One schedule. Returns nil, or a message saying what went wrong.
local function schedule(seed)
  local r = new_rng(seed)
  local per_page = r(1, 4) == 1 and r(1, 10) or r(1, 100)
  local n0 = r(0, per_page * r(0, 12))
  if n0 > 1500 then n0 = 1500 end
  local prefetch = r(0, 16)
  local limit = r(1, 3) == 1 and r(0, n0 + 5) or nil
  local arrive_max = r(1, 3) == 1 and 0 or r(0, math.floor(per_page / 2))
  local fail_pct = r(0, 2) == 0 and 0 or r(1, 25)
  local first = r(1, 6) == 1 and r(1, 3) or nil
  local m = per_page -- the server's per_page (it caps at 100)
  local desc = string.format("seed %d: %d calls, per_page %d, prefetch %d, limit %s, "
    .. "page %s, arrivals up to %d per request, %d%% failures",
    seed, n0, per_page, prefetch, tostring(limit), tostring(first), arrive_max, fail_pct)

  -- the listing, newest first: list[1] is the newest call
  local list = {}
  for i = 1, n0 do list[i] = "o" .. (n0 - i + 1) end
  local arrived = 0
  local function arrive(k)
    if k <= 0 then return end
    local new = {}
    for i = 1, k do new[i] = "n" .. (arrived + k - i + 1) end
    arrived = arrived + k
    for i = 1, #list do new[k + i] = list[i] end
    list = new
  end

  local function body(page)
    local T = #list
    local from = (page - 1) * m + 1
    local items = {}
    for i = from, math.min(from + m - 1, T) do items[#items + 1] = ITEM[list[i]] end
    local pages = math.floor((T + m - 1) / m)
    return '{"success":true,"data":[' .. table.concat(items, ",")
      .. '],"meta":{"current_page":' .. page .. ',"total_pages":' .. pages
      .. ',"total_count":' .. T .. ',"per_page":' .. m .. '}}'
  end

  local core = osvi.core({ per_page = per_page, limit = limit, page = first },
    { prefetch = prefetch, max_retries = 3, retry_base = 0.05, seed = seed })
  local now = 0
  local sent, done = {}, {} -- requests not yet answered by the server; answers not yet delivered
  local got, snapshot = {}, nil
  local steps = 0
  local max_flight = 0
  while true do
    steps = steps + 1
    if steps > 200000 then return desc .. ": does not end" end
    local page, err = core:next_page(now)
    if page == nil and err == nil then break end
    if err then
      if err.kind == "inconsistent" then
        return desc .. ": " .. tostring(err)
      end
      -- retries spent: the caller asks again, as a script would
    elseif page then
      for _, call in ipairs(page.data) do got[#got + 1] = call.call_id end
    else
      for _, q in ipairs(core:requests(now)) do sent[#sent + 1] = q end
      if #sent + #done > max_flight then max_flight = #sent + #done end
      local choice = #sent + #done > 0 and r(1, #sent + #done) or 0
      if #sent == 0 and #done == 0 then
        local t = core:timeout(now)
        if not t then return desc .. ": waits for nothing" end
        now = now + t + 0.001
      elseif choice <= #sent then
        -- the server answers a request now: calls may arrive first
        local q = table.remove(sent, choice)
        if snapshot then
          arrive(r(0, arrive_max))
        end
        local roll = r(1, 100)
        local answer
        if roll <= fail_pct then
          totals.failures = totals.failures + 1
          local kind = r(1, 3)
          if kind == 1 then answer = { q.id, 429, '{"success":false,"errors":["slow down"]}', r(0, 1) }
          elseif kind == 2 then answer = { q.id, 503, "<html>busy</html>" }
          else answer = { q.id, false } end
        else
          local page_no = tonumber(q.query:match("[?&]?page=(%d+)"))
          answer = { q.id, 200, body(page_no) }
          if not snapshot then
            snapshot = {}
            for i = 1, #list do snapshot[i] = list[i] end
          end
        end
        done[#done + 1] = answer
        now = now + r(0, 20) / 1000
      else
        -- an answer reaches the client (in any order)
        local a = table.remove(done, choice - #sent)
        if a[2] == false then
          core:failed(a[1], "network", "connection reset", true, now)
        else
          core:answer(a[1], a[2], a[3], a[4], now)
        end
      end
    end
  end
  local stats = core.stats
  totals.calls = totals.calls + #got
  totals.requests = totals.requests + stats.requests
  totals.arrived = totals.arrived + arrived
  totals.rereads = totals.rereads + stats.rereads
  totals.resyncs = totals.resyncs + stats.resyncs
  -- what the listing held when it started (the first answer fixed it)
  local want = {}
  if snapshot then
    local from = first and (first - 1) * m + 1 or 1
    for i = from, #snapshot do
      if limit and #want >= limit then break end
      want[#want + 1] = snapshot[i]
    end
  end
  if #got ~= #want then
    return string.format("%s: %d calls handed out, %d expected", desc, #got, #want)
  end
  for i = 1, #want do
    if got[i] ~= want[i] then
      return string.format("%s: call %d is %s, expected %s", desc, i, tostring(got[i]), want[i])
    end
  end
  if max_flight > prefetch + 3 then
    return string.format("%s: %d requests in flight", desc, max_flight)
  end
  return nil
end

describe("the paging core, on a simulated API", function()
  it("hands out every call of the listing exactly once, in order, over "
     .. (ONLY and ("seed " .. ONLY) or (RUNS .. " seeded schedules")), function()
    local failures = {}
    local from, to = 1, RUNS
    if ONLY then from, to = ONLY, ONLY end
    for seed = from, to do
      local ok, msg = pcall(schedule, seed)
      if not ok then msg = "seed " .. seed .. ": raised " .. tostring(msg) end
      if msg then
        failures[#failures + 1] = msg
        if #failures >= 5 then break end
      end
    end
    assert.equal(0, #failures, table.concat(failures, "\n"))
    if os.getenv("OSVI_PROPERTY_VERBOSE") then
      print(string.format("\n%d calls, %d requests, %d failures injected, %d calls arrived, "
        .. "%d re-reads, %d resyncs", totals.calls, totals.requests, totals.failures,
        totals.arrived, totals.rereads, totals.resyncs))
    end
    -- the schedules did real work: pages, arrivals, failures, re-reads
    if not ONLY and RUNS >= 1000 then
      assert.truthy(totals.calls > RUNS * 50, totals.calls)
      assert.truthy(totals.arrived > RUNS * 5, totals.arrived)
      assert.truthy(totals.failures > RUNS / 5, totals.failures)
      assert.truthy(totals.rereads > RUNS / 10, totals.rereads)
    end
  end)

  it("a listing that grows faster than it is read fails 'inconsistent', never loops", function()
    local core = osvi.core({ per_page = 10 }, { prefetch = 2 })
    local T = 100
    local function body(page)
      local items = {}
      for i = (page - 1) * 10 + 1, math.min(page * 10, T) do items[#items + 1] = ITEM["x" .. (T - i)] end
      return H.json.encode({ success = true, data = {}, meta = {} }) and
        '{"success":true,"data":[' .. table.concat(items, ",") .. '],"meta":{"current_page":'
        .. page .. ',"total_pages":' .. math.ceil(T / 10) .. ',"total_count":' .. T .. ',"per_page":10}}'
    end
    local n, err = 0, nil
    for _ = 1, 1000 do
      local page, e = core:next_page()
      if e then err = e break end
      if page == nil then break end
      if page then
        n = n + #page.data
      else
        for _, q in ipairs(core:requests()) do
          T = T + 15 -- more than a page arrives before each answer
          core:answer(q.id, 200, body(tonumber(q.query:match("page=(%d+)"))))
        end
      end
    end
    assert.is_table(err)
    assert.equal("inconsistent", err.kind)
    assert.truthy(n <= 100)
  end)

  for _, prefetch in ipairs { 0, 1, 4 } do
    it("a shift of the listing (calls left the view) loses and repeats nothing, prefetch "
       .. prefetch, function()
      -- a b c | d e f | g: page 1 is read, then d and e leave the view, so
      -- the listing is a b c f g when the next pages are read
      local function body(ids, page, total)
        local calls = {}
        for i, id in ipairs(ids) do calls[i] = { call_id = id } end
        return H.page_body(calls, { current_page = page, total_pages = math.ceil(total / 3),
                                    total_count = total, per_page = 3 })
      end
      local first = true
      local function answer(page)
        if page == 1 and first then
          first = false
          return body({ "a", "b", "c" }, 1, 7)
        end
        if page == 1 then return body({ "a", "b", "c" }, 1, 5) end
        if page == 2 then return body({ "f", "g" }, 2, 5) end
        return body({}, page, 5)
      end
      local core = osvi.core({ per_page = 3 }, { prefetch = prefetch })
      local ids = {}
      for _ = 1, 100 do
        local page, err = core:next_page()
        assert.is_nil(err)
        if page == nil then break end
        if page then
          for _, call in ipairs(page.data) do ids[#ids + 1] = call.call_id end
        else
          for _, q in ipairs(core:requests()) do
            core:answer(q.id, 200, answer(tonumber(q.query:match("page=(%d+)"))))
          end
        end
      end
      assert.same({ "a", "b", "c", "f", "g" }, ids)
      assert.truthy(core.stats.resyncs >= 1)
    end)
  end

  it("is checked like a cursor: filters, options, ids", function()
    assert.equal("stauts", H.raises(osvi.core, { stauts = "picked" }).key)
    assert.equal("prefetch", H.raises(osvi.core, {}, { prefetch = 17 }).key)
    local core = osvi.core({ per_page = 5 })
    -- answers to requests it never made are ignored
    core:answer(12345, 200, "{}")
    core:failed(12345, "network", "nope", true)
    local reqs = core:requests()
    assert.equal(1, #reqs)
    assert.equal("page=1&per_page=5", reqs[1].query)
    assert.same({}, core:requests()) -- in flight: not asked for twice
    core:answer(reqs[1].id, 200, H.page_body({ { call_id = "a" } },
      { current_page = 1, total_pages = 1, total_count = 1, per_page = 5 }))
    local page = core:next_page()
    assert.equal("a", page.data[1].call_id)
    assert.is_nil(core:next_page())
  end)
end)
