-- Building blocks for report writers and other hosts: count, decode, the
-- debug log, how a page was fetched, and the non-blocking poll.
local H = require "spec.support.helper"
local osvi = require "osvi"
local socket = require "socket"

local server, all

describe("extras", function()
  setup(function()
    server = H.start { calls = 250 }
    all = server:calls()
  end)
  teardown(function() server:stop() end)
  before_each(function() server:reset() end)

  describe("count", function()
    it("is meta.total_count of one request for one call", function()
      local c = server:client()
      assert.equal(250, c:count())
      local picked = 0
      for _, x in ipairs(all) do if x.status == "picked" then picked = picked + 1 end end
      assert.equal(picked, c:count { status = "picked" })
      local stats = server:stats()
      assert.equal(2, stats.requests)
      assert.equal("status=picked&per_page=1", stats.log[2].query)
    end)

    it("returns nil, err on failure and raises on a bad filter", function()
      local c = server:client { max_retries = 0 }
      local n, err = c:count { agent_uuid = "agent_nobody" }
      assert.is_nil(n)
      assert.equal("not_found", err.kind)
      assert.equal("status", H.raises(c.count, c, { status = "nope" }).key)
    end)

    it("works through the default client", function()
      local ok, out = H.run_lua("print(require('osvi').count())",
        { OSVI_API_TOKEN = H.TOKEN, OSVI_BASE_URL = server.url })
      assert.is_true(ok, out)
      assert.equal("250\n", out)
    end)
  end)

  describe("decode", function()
    it("turns a status and a body into a page, normalised", function()
      local page = osvi.decode(200, '{"success":true,"data":[{"call_id":"a","tag":null,'
        .. '"duration_seconds":42.0}],"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":25}}')
      assert.equal("a", page.data[1].call_id)
      assert.is_nil(page.data[1].tag)
      assert.equal("integer", H.math_type(page.data[1].duration_seconds))
      assert.equal("integer", H.math_type(page.meta.total_count))
    end)

    it("gives the same error kinds as the built-in transport", function()
      local cases = {
        { 401, '{"success":false,"errors":["bad token"]}', "auth" },
        { 404, "", "not_found" },
        { 422, '{"success":false,"errors":["x"]}', "validation" },
        { 429, "", "rate_limited" },
        { 502, "<html>", "server" },
        { 302, "", "http" },
        { 200, "<html>", "decode" },
        { 200, '{"success":false}', "api" },
      }
      for _, c in ipairs(cases) do
        local page, err = osvi.decode(c[1], c[2])
        assert.is_nil(page)
        assert.equal(c[3], err.kind)
        assert.equal(c[1], err.status)
      end
      local _, err = osvi.decode(429, "", 30)
      assert.equal(30, err.retry_after)
      -- the header as received: seconds, an HTTP date, garbage
      assert.equal(7, select(2, osvi.decode(429, "", "7")).retry_after)
      assert.equal(2, select(2, osvi.decode(429, "", 1.5)).retry_after)
      local when = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 60)
      local secs = select(2, osvi.decode(503, "", when)).retry_after
      assert.truthy(secs >= 58 and secs <= 60, secs)
      assert.equal(0, select(2, osvi.decode(429, "", "Wed, 21 Oct 2015 07:28:00 GMT")).retry_after)
      assert.is_nil(select(2, osvi.decode(429, "", "soon")).retry_after)
    end)

    it("lets an interrupt from the host through, instead of calling it 'not JSON'", function()
      local body = '{"success":true,"data":[],"meta":{"current_page":1,"total_pages":0,'
        .. '"total_count":0,"per_page":25}}'
      local calls = 0
      local ok, err = pcall(function()
        -- like lua.c's Ctrl-C handler: a hook that raises at the next call,
        -- here the call into cjson's decoder (the first is osvi.decode)
        debug.sethook(function()
          calls = calls + 1
          if calls == 2 then debug.sethook() error("interrupted!") end
        end, "c")
        return osvi.decode(200, body)
      end)
      debug.sethook()
      assert.is_false(ok)
      assert.equal("string", type(err))
      assert.matches("interrupted!", err, 1, true)
    end)
  end)

  describe("the debug log", function()
    local function run(code, env)
      local ok, out = H.run_lua(code, env)
      assert.is_true(ok, out)
      return out
    end

    it("writes one line per request on stderr with OSVI_LOG=1, never the token", function()
      server:script { { status = 503 } }
      local out = run(string.format([[
        local osvi = require "osvi"
        local c = osvi.new { token = %q, base_url = %q, retry_base = 0, prefetch = 0 }
        local n = 0
        for _ in c:calls { status = "picked", per_page = 100 } do n = n + 1 end
        io.stdout:write("calls ", n, "\n")
      ]], H.TOKEN, server.url), { OSVI_LOG = "1" })
      local lines = {}
      for line in out:gmatch("osvi: GET [^\n]*") do lines[#lines + 1] = line end
      assert.truthy(#lines >= 3, out)
      assert.matches("^osvi: GET /v1/calls%?status=picked&page=1&per_page=100 "
        .. "%-> 503, attempt 1, %d+ bytes, [%d.]+ ms$", lines[1])
      assert.matches("-> 200, attempt 2", lines[2], 1, true)
      assert.falsy(out:find(H.TOKEN, 1, true))
    end)

    it("is off without OSVI_LOG, and the log option overrides it", function()
      local code = string.format([[
        local osvi = require "osvi"
        assert(osvi.new { token = %q, base_url = %q, log = LOG }:page {})
      ]], H.TOKEN, server.url)
      assert.equal("", run((code:gsub("LOG", "nil"))))
      assert.equal("", run((code:gsub("LOG", "false")), { OSVI_LOG = "1" }))
      assert.matches("osvi: GET /v1/calls", run((code:gsub("LOG", "true"))))
      assert.equal("log", H.raises(osvi.new, { token = H.TOKEN, log = "yes" }).key)
    end)
  end)

  it("a page records how it was fetched", function()
    server:script { { status = 500 } }
    local page = assert(server:client():page { per_page = 5 })
    assert.equal(200, page.fetch.status)
    assert.equal(2, page.fetch.attempts)
    assert.equal("number", type(page.fetch.elapsed))
    assert.truthy(page.fetch.bytes > 0)
    local cur = server:client { prefetch = 2 }:calls { per_page = 100 }
    local p = cur:next_page()
    assert.equal(1, p.fetch.attempts)
  end)

  describe("poll", function()
    it("never waits: false until a page is in, then pages in order, then nil", function()
      server:config { latency_ms = 100 }
      for _, prefetch in ipairs { 0, 2 } do
        server:reset()
        server:config { latency_ms = 100 }
        local cur = server:client { prefetch = prefetch }:calls { per_page = 100 }
        local pages, falses, worst = {}, 0, 0
        local deadline = socket.gettime() + 5
        while socket.gettime() < deadline do
          -- the time a poll spent not running: waiting (slow builds, such as
          -- the sanitizers', take longer, but on the CPU)
          local t0, c0 = socket.gettime(), os.clock()
          local p = cur:poll()
          worst = math.max(worst, (socket.gettime() - t0) - (os.clock() - c0))
          if p == nil then break end
          if p then pages[#pages + 1] = p.meta.current_page
          else falses = falses + 1; socket.sleep(0.005) end
        end
        assert.same({ 1, 2, 3 }, pages)
        assert.truthy(falses > 10, "polled " .. falses .. " times without a page")
        assert.truthy(worst < 0.05, "one poll was off the CPU for " .. worst .. " s")
        assert.equal(3, server:stats().requests)
      end
    end)

    it("raises on failure, like next_page", function()
      server:script { { status = 404 } }
      local cur = server:client { max_retries = 0 }:calls()
      local err
      for _ = 1, 1000 do
        local ok, e = pcall(cur.poll, cur)
        if not ok then err = e break end
        socket.sleep(0.002)
      end
      assert.equal("not_found", err.kind)
    end)
  end)
end)
