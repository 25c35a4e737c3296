-- Host event loops wait on osvi instead of polling it: cqueues and luv run
-- 100 listings at once from one thread, each cursor waited on through its
-- descriptor and deadline (cur:pollfd(), cur:events(), cur:timeout()); the
-- busy-polling variant is the contrast. And osvi.core over luv's own TCP.
-- The examples are in examples/eventloop/; they run under Lua 5.4 (cqueues
-- and luv as Debian packages them).
local H = require "spec.support.helper"

local function has(module)
  local p = io.popen(H.LUA .. " -e 'require \"" .. module .. "\"' 2>&1; echo \"@@$?\"")
  local out = p:read("*a")
  p:close()
  return out:match("@@0") ~= nil
end

-- FNV-1a over the ids in order, as the examples compute it (bitwise
-- operators: Lua 5.3 and later, so it is compiled only there)
local digest = H.VERSION >= 5.3 and load([[
  return function(calls)
    local h = 2166136261
    for _, call in ipairs(calls) do
      local id = call.call_id
      for k = 1, #id do h = ((h ~ id:byte(k)) * 16777619) & 0xffffffff end
      h = ((h ~ 10) * 16777619) & 0xffffffff
    end
    return string.format("%08x", h)
  end]])() or nil

local function run(script, url, ...)
  local cmd = string.format("OSVI_API_TOKEN=%s LUA_CPATH='%s;;' timeout %d %s %s %s %s 2>&1",
    H.TOKEN, (os.getenv("OSVI_CPATH") or "./?.so"), 120 * (tonumber(os.getenv("OSVI_SPEC_SLACK")) or 1),
    H.LUA, script, url, table.concat({ ... }, " "))
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local usable = H.VERSION == 5.4 and os.getenv("OSVI_SPEC_WRAPPER") == nil

describe("a cursor as a pollable", function()
  local server
  setup(function() server = H.start { calls = 250 } end)
  teardown(function() server:stop() end)

  it("gives a descriptor, 'r' and a timeout, and poll() moves it on", function()
    local cur = server:client { prefetch = 2 }:calls { per_page = 100 }
    local fd = cur:pollfd()
    assert.equal("integer", H.math_type(fd))
    assert.truthy(fd > 2)
    assert.equal("r", cur:events())
    local n, pages, spins = 0, 0, 0
    local socket = require "socket"
    while true do
      local page = cur:poll()
      if page == nil then break end
      if page then
        pages = pages + 1
        n = n + #page.data
      else
        spins = spins + 1
        local t = cur:timeout()
        assert.truthy(t == nil or (type(t) == "number" and t >= 0))
        -- wait as a host would: on the descriptor (LuaSocket's select
        -- takes any object with getfd), at most the timeout
        local fdobj = { getfd = function() return fd end, dirty = function() return false end }
        socket.select({ fdobj }, nil, t or 1)
      end
      assert.truthy(spins < 200, "poll() found nothing too often: it is not waited on")
    end
    assert.equal(250, n)
    assert.equal(3, pages)
    assert.is_nil(cur:pollfd())
    assert.is_nil(cur:timeout())
  end)

  it("says 0 when a page is already in, and the same descriptor all along", function()
    local cur = server:client { prefetch = 4 }:calls { per_page = 50 }
    local fd = cur:pollfd()
    assert.equal(0, cur:timeout()) -- nothing asked for yet: poll() now
    local page
    repeat page = cur:poll() until page
    assert.equal(fd, cur:pollfd())
    require("socket").sleep(0.2) -- the next pages come in meanwhile
    local t = cur:timeout()
    assert.truthy(t == nil or t >= 0)
    cur:close()
    assert.is_nil(cur:pollfd())
  end)

  it("poll() and next_page() mixed on one cursor, at every prefetch: the same listing, each call once", function()
    local want = {}
    for call in server:client { prefetch = 0 }:calls { per_page = 20 } do want[#want + 1] = call.call_id end
    assert.equal(250, #want)
    for _, prefetch in ipairs { 0, 1, 4 } do
      for pattern = 1, 3 do -- poll first; alternate; poll until a page, then next_page to the end
        local cur = server:client { prefetch = prefetch }:calls { per_page = 20 }
        local got, k = {}, 0
        while true do
          k = k + 1
          local page
          if (pattern == 1 and k == 1) or (pattern == 2 and k % 2 == 1) or (pattern == 3 and #got == 0) then
            page = cur:poll()
            if page == false then page = cur:next_page() end -- the network's time: wait for it
          else
            page = cur:next_page()
          end
          if not page then break end
          for _, call in ipairs(page.data) do got[#got + 1] = call.call_id end
        end
        assert.same(want, got, "prefetch " .. prefetch .. ", pattern " .. pattern)
      end
    end
  end)
end)

describe("host event loops", function()
  local server, want
  setup(function()
    server = H.start { calls = 1000, latency_ms = 50 }
    want = digest and digest(server:calls())
  end)
  teardown(function() server:stop() end)

  local it_or_pending
  for _, loop in ipairs { "cqueues", "luv" } do
    local script = "examples/eventloop/" .. loop .. "_calls.lua"
    it_or_pending = (usable and has(loop)) and it or pending
    it_or_pending(loop .. ": 100 listings of 1,000 calls at once, each exactly once, waiting instead of polling",
      function()
        local function parse(out)
          local n, lo, hi, ids = out:match("(%d+) listings of (%d+) to (%d+) calls, ids (%x+);")
          local pages, empty = out:match("(%d+) pages, (%d+) polls found nothing")
          assert(n and pages, out)
          return { n = tonumber(n), lo = tonumber(lo), hi = tonumber(hi), ids = ids,
                   pages = tonumber(pages), empty = tonumber(empty) }
        end
        local out = run(script, server.url, 100, 20)
        local spin_out = run(script, server.url, 100, 20, "--spin")
        print("\n" .. out .. spin_out)
        local waited, spun = parse(out), parse(spin_out)
        for _, r in ipairs { waited, spun } do
          assert.equal(100, r.n)
          assert.equal(1000, r.lo)
          assert.equal(1000, r.hi)
          assert.equal(want, r.ids)
          assert.equal(100 * 50, r.pages)
        end
        -- waiting on the cursor: about one wake-up a page (the page came),
        -- however busy the machine; polling again at once: many more. The
        -- CPU time these save is measured in bench/README.md, not here.
        assert.truthy(waited.empty <= 2 * waited.pages, out)
        assert.truthy(spun.empty > 2 * waited.empty, out .. spin_out)
      end)
  end

  it_or_pending = (usable and has("luv")) and it or pending
  it_or_pending("luv TCP + osvi.core: the host's own sockets, every call once", function()
    server:reset()
    server:config { latency_ms = 0 }
    local out = run("examples/eventloop/luv_core.lua", server.url, 4)
    assert.matches("1000 calls, ids " .. want, out, 1, true)
    -- and with calls arriving during the listing (they are not listed)
    server:reset()
    server:config { latency_ms = 0, arrivals_per_request = 7 }
    local before = server:calls()
    out = run("examples/eventloop/luv_core.lua", server.url, 4)
    local n, ids = out:match("(%d+) calls, ids (%x+)")
    assert(n, out)
    -- the first answer saw 7 arrivals: the listing at its start
    local first = {}
    local arrived = server:calls()
    for i = 1, #before + 7 do first[i] = arrived[#arrived - #before - 7 + i] end
    assert.equal(#before + 7, tonumber(n))
    assert.equal(digest(first), ids)
    server:reset()
    server:config { latency_ms = 50 }
  end)
end)
