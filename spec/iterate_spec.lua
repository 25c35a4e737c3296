-- Iteration: laziness, keep-alive, filters end to end, limit, close and
-- break, next_page and meta, repeats across page boundaries, normalisation.
local H = require "spec.support.helper"
local osvi = require "osvi"

local server, all

local function v1_requests()
  local n, log = 0, server:stats().log
  for _, r in ipairs(log) do if r.path == "/v1/calls" then n = n + 1 end end
  return n, log
end

describe("iteration", function()
  setup(function()
    server = H.start { calls = 250 }
    all = server:calls()
  end)
  teardown(function() server:stop() end)
  before_each(function() server:reset() end)

  it("yields every call, most recent first, in 3 requests over 1 kept-alive connection", function()
    local c = server:client()
    local ids = {}
    for call in c:calls() do ids[#ids + 1] = call.call_id end
    assert.equal(250, #ids)
    for i, call in ipairs(all) do assert.equal(call.call_id, ids[i]) end
    local stats = server:stats()
    assert.equal(3, stats.requests)
    assert.equal(1, stats.connections)
    assert.equal("page=1&per_page=100", stats.log[1].query)
    assert.equal("page=2&per_page=100", stats.log[2].query)
    assert.equal("page=3&per_page=100", stats.log[3].query)
  end)

  it("is lazy: page k+1 is fetched only when page k is used up", function()
    local c = server:client()
    local cur = c:calls { per_page = 100 }
    assert.equal(0, v1_requests())
    for i = 1, 100 do assert.truthy(cur()) ; if i == 1 then assert.equal(1, v1_requests()) end end
    assert.equal(1, v1_requests())
    assert.truthy(cur())
    assert.equal(2, v1_requests())
    cur:close()
  end)

  it("keeps the connection for the next use after a cursor is closed", function()
    local c = server:client()
    for _ in c:calls { per_page = 10 } do break end
    for _ in c:calls { per_page = 10, limit = 15 } do end
    assert(c:page {})
    local stats = server:stats()
    assert.equal(4, stats.requests)
    assert.equal(1, stats.connections)
  end)

  it("sends the same frozen filters on every page", function()
    local c = server:client()
    local filters = { status = { "picked", "busy" }, per_page = 20 }
    local cur = c:calls(filters)
    filters.status = "failed" -- changing the table later changes nothing
    local n = 0
    for call in cur do
      n = n + 1
      assert.truthy(call.status == "picked" or call.status == "busy")
    end
    local _, log = v1_requests()
    assert.truthy(#log >= 2)
    for i, r in ipairs(log) do
      assert.equal("status=picked,busy&page=" .. i .. "&per_page=20", r.query)
    end
    local expected = 0
    for _, call in ipairs(all) do
      if call.status == "picked" or call.status == "busy" then expected = expected + 1 end
    end
    assert.equal(expected, n)
  end)

  it("applies each filter as the server does", function()
    local c = server:client()
    local agent = all[1].agent_uuid
    local function count(pred)
      local n = 0
      for _, call in ipairs(all) do if pred(call) then n = n + 1 end end
      return n
    end
    local function got(filters)
      local n = 0
      for _ in c:calls(filters) do n = n + 1 end
      return n
    end
    assert.equal(count(function(x) return x.agent_uuid == agent end), got { agent_uuid = agent })
    assert.equal(count(function(x) return x.call_type == "inbound" end), got { call_type = "inbound" })
    local phone = all[3].phone_number:sub(1, 6)
    assert.equal(count(function(x) return x.phone_number:find(phone, 1, true) end),
      got { phone_number = phone })
    local campaign
    for _, x in ipairs(all) do if x.campaign_id ~= H.json.null then campaign = x.campaign_id break end end
    assert.equal(count(function(x) return x.campaign_id == campaign end), got { campaign_id = campaign })
    -- dates: inclusive bounds on call_picked_at
    local picked = {}
    for _, x in ipairs(all) do if x.call_picked_at ~= H.json.null then picked[#picked + 1] = x end end
    local hi, lo = picked[10].call_picked_at, picked[40].call_picked_at
    local expected = count(function(x)
      local t = x.call_picked_at ~= H.json.null and osvi.time(x.call_picked_at)
      return t and t >= osvi.time(lo) and t <= osvi.time(hi)
    end)
    assert.truthy(expected >= 31)
    assert.equal(expected, got { start_date = lo, end_date = hi })
    assert.equal(expected, got { start_date = osvi.time(lo), end_date = osvi.time(hi) })
    -- a plain date is a whole IST day
    local day = hi:sub(1, 10)
    assert.equal(count(function(x)
      return x.call_picked_at ~= H.json.null and x.call_picked_at:sub(1, 10) == day
    end), got { start_date = day, end_date = day })
  end)

  it("stops after limit calls without fetching more, and asks for fewer when it can", function()
    local c = server:client()
    local n = 0
    for _ in c:calls { limit = 150 } do n = n + 1 end
    assert.equal(150, n)
    assert.equal(2, v1_requests())
    server:reset()
    n = 0
    for _ in c:calls { limit = 5 } do n = n + 1 end
    assert.equal(5, n)
    local count, log = v1_requests()
    assert.equal(1, count)
    assert.equal("page=1&per_page=5", log[1].query)
    server:reset()
    for _ in c:calls { limit = 0 } do error("no call expected") end
    assert.equal(0, v1_requests())
  end)

  it("starts at the given page", function()
    local c = server:client()
    local first
    for call in c:calls { page = 3, per_page = 10 } do first = call break end
    assert.equal(all[21].call_id, first.call_id)
  end)

  it("ends on an empty first page without a second request", function()
    local c = server:client()
    for _ in c:calls { phone_number = "+0000000" } do error("no call expected") end
    assert.equal(1, v1_requests())
  end)

  describe("closing", function()
    -- Before Lua 5.4 a for loop has no closing value: after a break or an
    -- error the cursor stays open until close() or the garbage collector.
    local function closed_by_loop(cur)
      if not H.HAS_CLOSE then
        assert.matches("^osvi%.Cursor %(0x%x+%)$", tostring(cur))
        cur:close()
      end
    end

    it(H.HAS_CLOSE and "closes the cursor on break through the for loop's closing value"
      or "returns the closing value, which a for loop before Lua 5.4 ignores", function()
      local c = server:client()
      local a, b, cc, fourth = c:calls()
      assert.is_nil(b)
      assert.is_nil(cc)
      assert.equal(a, fourth)
      local cur, s, ctl, closing = c:calls()
      for _ in cur, s, ctl, closing do break end
      closed_by_loop(cur)
      assert.equal("osvi.Cursor (closed)", tostring(cur))
      assert.is_nil(cur())
      assert.is_nil(cur:next_page())
    end)

    it(H.HAS_CLOSE and "closes the cursor when the loop body raises"
      or "leaves the cursor open when the loop body raises, before Lua 5.4", function()
      local c = server:client()
      local cur, s, ctl, closing = c:calls()
      local ok, err = pcall(function()
        for _ in cur, s, ctl, closing do error("boom") end
      end)
      assert.is_false(ok)
      assert.matches("boom", err)
      closed_by_loop(cur)
      assert.equal("osvi.Cursor (closed)", tostring(cur))
    end)

    it("closes by hand, twice, and at the end of the data", function()
      local c = server:client()
      local cur = c:calls { per_page = 100 }
      assert.matches("^osvi%.Cursor %(0x%x+%)$", tostring(cur))
      cur:close()
      cur:close()
      assert.is_nil(cur())
      cur = c:calls { limit = 3 }
      for _ in cur do end
      assert.equal("osvi.Cursor (closed)", tostring(cur))
      assert.is_nil(cur())
      assert.equal(1, v1_requests())
    end)

    it("is released by the garbage collector", function()
      local c = server:client()
      for _ = 1, 200 do local cur = c:calls() ; cur() end
      collectgarbage()
      collectgarbage()
      assert(c:page {})
      assert.equal(1, server:stats().connections)
    end)
  end)

  describe("next_page", function()
    it("returns pages {data, meta} in order, then nil", function()
      local c = server:client()
      local cur = c:calls { per_page = 100 }
      assert.is_nil(cur.meta)
      local p1 = cur:next_page()
      assert.equal(100, #p1.data)
      assert.same({ current_page = 1, total_pages = 3, total_count = 250, per_page = 100 }, p1.meta)
      assert.equal(p1.meta, cur.meta)
      local p2, p3 = cur:next_page(), cur:next_page()
      assert.equal(2, p2.meta.current_page)
      assert.equal(50, #p3.data)
      assert.equal(all[250].call_id, p3.data[50].call_id)
      assert.is_nil(cur:next_page())
      assert.is_nil(cur:next_page())
      assert.equal(3, cur.meta.current_page) -- meta of the last page read stays
      assert.equal(3, v1_requests())
    end)

    it("respects limit", function()
      local c = server:client()
      local cur = c:calls { limit = 130 }
      assert.equal(100, #cur:next_page().data)
      assert.equal(30, #cur:next_page().data)
      assert.is_nil(cur:next_page())
    end)
  end)

  describe("normalisation", function()
    it("gives plain tables with Lua integers and no null values", function()
      local c = server:client()
      local saw_null_tag, saw_unpicked = false, false
      for call in c:calls() do
        assert.equal("table", type(call))
        assert.is_nil(getmetatable(call))
        assert.equal("integer", H.math_type(call.duration_seconds))
        for k, v in pairs(call) do
          assert.is_not.equal("userdata", type(v), k)
          if type(v) == "number" then assert.equal("integer", H.math_type(v), k) end
        end
        if call.tag == nil then saw_null_tag = true
        else assert.equal("integer", H.math_type(call.tag.id)) end
        if call.call_picked_at == nil then saw_unpicked = true end
        if call.call_type == "inbound" then assert.is_nil(call.campaign_id) end
      end
      assert.is_true(saw_null_tag)
      assert.is_true(saw_unpicked)
    end)

    it("keeps meta integers and passes unknown fields through", function()
      server:script { { status = 200, body = [[{"success":true,"data":[{"call_id":"x",
        "duration_seconds":42.0,"new_field":{"deep":[1,null,2.5,"s"]},"tag":null,"flag":true}],
        "extra":1,"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":25,"cursor":"abc"}}]] } }
      local c = server:client()
      local page = assert(c:page {})
      local call = page.data[1]
      assert.equal("integer", H.math_type(call.duration_seconds))
      assert.equal(42, call.duration_seconds)
      assert.equal(1, call.new_field.deep[1])
      assert.is_nil(call.new_field.deep[2])
      assert.equal(2.5, call.new_field.deep[3])
      assert.equal("s", call.new_field.deep[4])
      assert.is_true(call.flag)
      assert.is_nil(call.tag)
      assert.equal("abc", page.meta.cursor)
      for _, k in ipairs { "current_page", "total_pages", "total_count", "per_page" } do
        assert.equal("integer", H.math_type(page.meta[k]))
      end
    end)
  end)

  describe("calls that move across a page boundary", function()
    local body = H.ids_page

    it("are yielded once: a call of page k seen again on page k+1 is dropped", function()
      -- two new calls arrived between the requests: c and d slid from page 1 to page 2
      server:script {
        { status = 200, body = body({ "a", "b", "c" }, 1, 3) },
        { status = 200, body = body({ "b", "c", "d" }, 2, 3) },
        { status = 200, body = body({ "d", "e", "f" }, 3, 3) },
      }
      local c = server:client()
      local ids = {}
      for x in c:calls { per_page = 3 } do ids[#ids + 1] = x.call_id end
      assert.same({ "a", "b", "c", "d", "e", "f" }, ids)
    end)

    it("also in pages taken by hand", function()
      server:script {
        { status = 200, body = body({ "a", "b", "c" }, 1, 2) },
        { status = 200, body = body({ "c", "d" }, 2, 2) },
      }
      local cur = server:client():calls { per_page = 3 }
      assert.equal(3, #cur:next_page().data)
      local p2 = cur:next_page()
      assert.equal(1, #p2.data)
      assert.equal("d", p2.data[1].call_id)
    end)
  end)
end)
