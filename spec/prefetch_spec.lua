-- Prefetch: the next pages are on their way while the caller works; pages
-- come in order, no call twice, none lost, the number in flight is bounded
-- (counted at the server), a 429 lowers it, and break cancels.
local H = require "spec.support.helper"
local socket = require "socket"

local server, all

local function ids(client, filters)
  local out = {}
  for call in client:calls(filters) do out[#out + 1] = call.call_id end
  return out
end

describe("prefetch", function()
  setup(function()
    server = H.start { calls = 1000 }
    all = server:calls()
  end)
  teardown(function() server:stop() end)
  before_each(function() server:reset() end)

  it("is 4 pages by default", function()
    server:config { latency_ms = 20 }
    local osvi = require "osvi"
    local got = ids(osvi.new { token = H.TOKEN, base_url = server.url }, { per_page = 50 })
    assert.equal(1000, #got)
    local stats = server:stats()
    assert.truthy(stats.max_inflight <= 4 and stats.max_inflight >= 2, stats.max_inflight)
  end)

  it("0 turns it off: strictly lazy, one connection", function()
    server:config { latency_ms = 20 }
    local got = ids(server:client { prefetch = 0 }, { per_page = 100 })
    assert.equal(1000, #got)
    local stats = server:stats()
    assert.equal(1, stats.max_inflight)
    assert.equal(1, stats.connections)
  end)

  for _, n in ipairs { 1, 2, 4, 8 } do
    it("keeps order, loses and repeats nothing, with at most " .. n .. " in flight", function()
      server:config { latency_ms = 20 }
      local got = ids(server:client { prefetch = n }, { per_page = 50 })
      assert.equal(#all, #got)
      for i, call in ipairs(all) do assert.equal(call.call_id, got[i]) end
      local stats = server:stats()
      assert.equal(20, stats.requests)
      assert.truthy(stats.max_inflight <= n, "max in flight " .. stats.max_inflight)
      if n > 1 then assert.truthy(stats.max_inflight >= 2, "no overlap at all") end
      local pages = {}
      for _, r in ipairs(stats.log) do pages[tonumber(r.query:match("page=(%d+)"))] = true end
      for p = 1, 20 do assert.truthy(pages[p], "page " .. p) end
    end)
  end

  it("overlaps the latency: 20 pages at 50 ms take well under 20 x 50 ms", function()
    server:config { latency_ms = 50 }
    local t0 = socket.gettime()
    assert.equal(1000, #ids(server:client { prefetch = 8 }, { per_page = 50 }))
    local took = socket.gettime() - t0
    assert.truthy(took < 0.6, "took " .. took) -- sequential is 1 s or more
  end)

  it("asks for nothing beyond what limit needs, nor before the first page is in", function()
    server:config { latency_ms = 10 }
    local got = ids(server:client { prefetch = 8 }, { per_page = 100, limit = 250 })
    assert.equal(250, #got)
    assert.equal(3, server:stats().requests)
    server:reset()
    assert.equal(5, #ids(server:client { prefetch = 8 }, { limit = 5 }))
    assert.equal(1, server:stats().requests)
  end)

  it("a caller who stops early costs at most the prefetched pages", function()
    server:config { latency_ms = 10 }
    local c = server:client { prefetch = 3 }
    for _ in c:calls { per_page = 10 } do break end
    -- page 1, then pages 2..4 were asked for while the caller had page 1
    assert.truthy(server:stats().requests <= 4)
    socket.sleep(0.1)
    assert.truthy(server:stats().requests <= 4)
  end)

  it("break cancels what is in flight", function()
    local function sockets()
      local p = io.popen("ls -l /proc/" .. H.self_pid() .. "/fd | grep -c socket:")
      local n = tonumber(p:read("*l"))
      p:close()
      return n
    end
    collectgarbage()
    collectgarbage()
    server:config { latency_ms = 300 }
    local c = server:client { prefetch = 4 }
    local base = sockets()
    local t0 = socket.gettime()
    local cur, s, ctl, closing = c:calls { per_page = 10 }
    local open
    for _ in cur, s, ctl, closing do
      open = sockets() -- pages 2..5 are on their way
      break
    end
    -- before Lua 5.4 the loop ignores its closing value: close() cancels
    if not H.HAS_CLOSE then cur:close() end
    -- no waiting for the pages in flight: one page of latency only
    assert.truthy(socket.gettime() - t0 < 0.55)
    local after = sockets()
    assert.truthy(open >= base + 4, "open " .. open .. " from " .. base)
    -- libcurl's wakeup pair and at most the idle connection of page 1 stay
    assert.truthy(after <= base + 3, "after " .. after .. " from " .. base)
    assert.truthy(server:stats().requests <= 5)
    -- and the client works on
    server:config { latency_ms = 0 }
    assert.equal(1000, #ids(c, { per_page = 100 }))
    socket.sleep(0.35) -- the server finishes with the cancelled requests
  end)

  it("a 429 lowers the number in flight, and the page is retried in place", function()
    server:config { latency_ms = 20 }
    -- page 1 passes; two of the pages asked for next are answered 429
    server:script { { fault = "pass" }, { status = 429, headers = { ["Retry-After"] = "0" }, times = 2 } }
    local cur = server:client { prefetch = 8 }:calls { per_page = 50 }
    local got = {}
    for _ = 1, 500 do got[#got + 1] = cur().call_id end
    local n429 = 0
    for _, r in ipairs(server:stats().log) do if r.status == 429 then n429 = n429 + 1 end end
    assert.equal(2, n429)
    -- every page asked for before the 429s has been answered by now; from
    -- here on at most 8 / 2 / 2 = 2 are in flight
    server:reset()
    server:config { latency_ms = 20 }
    for call in cur do got[#got + 1] = call.call_id end
    assert.equal(#all, #got)
    for i, call in ipairs(all) do assert.equal(call.call_id, got[i]) end
    local stats = server:stats()
    assert.truthy(stats.max_inflight <= 2, "max in flight " .. stats.max_inflight)
  end)

  it("fails on the page that fails, in order, after the pages before it", function()
    server:script { { fault = "pass" }, { fault = "pass" }, { status = 404, times = 10 } }
    -- one page ahead at a time, so pages reach the server in order
    local c = server:client { prefetch = 1, max_retries = 0 }
    local n = 0
    local ok, err = pcall(function()
      for _ in c:calls { per_page = 10 } do n = n + 1 end
    end)
    assert.is_false(ok)
    assert.equal("not_found", err.kind)
    assert.equal(20, n)
  end)

  it("retries a failed page in the background like a single request", function()
    server:script { { fault = "pass" }, { fault = "reset" }, { status = 503 } }
    local got = ids(server:client { prefetch = 4 }, { per_page = 100 })
    assert.equal(1000, #got)
    assert.equal(12, server:stats().requests)
  end)

  it("drops calls repeated across pages, as without prefetch", function()
    local body = H.ids_page
    server:script {
      { status = 200, body = body({ "a", "b", "c" }, 1, 3) },
      { status = 200, body = body({ "b", "c", "d" }, 2, 3) },
      { status = 200, body = body({ "d", "e", "f" }, 3, 3) },
    }
    -- one page ahead at a time, so the scripted bodies go to pages in order
    assert.same({ "a", "b", "c", "d", "e", "f" }, ids(server:client { prefetch = 1 }, { per_page = 3 }))
  end)

  it("lets two cursors of one client iterate at the same time", function()
    local c = server:client { prefetch = 2 }
    local a, b = c:calls { per_page = 100 }, c:calls { per_page = 100 }
    local na, nb = 0, 0
    while true do
      local x, y = a(), b()
      if x then na = na + 1 end
      if y then nb = nb + 1 end
      if not x and not y then break end
    end
    assert.equal(1000, na)
    assert.equal(1000, nb)
  end)

  it("is checked as an option", function()
    assert.equal("prefetch", H.raises(server.client, server, { prefetch = -1 }).key)
    assert.equal("prefetch", H.raises(server.client, server, { prefetch = 17 }).key)
    assert.equal("prefetch", H.raises(server.client, server, { prefetch = 1.5 }).key)
  end)
end)
