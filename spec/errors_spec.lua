-- Errors: every kind from its server fault, retries and their limits, and
-- the client staying usable afterwards.
local H = require "spec.support.helper"
local osvi = require "osvi"
local socket = require "socket"

local server

local function fails(client, filters)
  local err = H.fails(client, filters)
  assert.equal("osvi.Error", getmetatable(err).__name)
  return err
end

local function requests() return server:stats().requests end

describe("errors", function()
  setup(function() server = H.start { calls = 120 } end)
  teardown(function() server:stop() end)
  before_each(function() server:reset() end)

  it("a wrong filter raises a usage error naming the key, with no request sent", function()
    local c = server:client()
    local err = H.raises(c.page, c, { stauts = "picked" })
    assert.equal("usage", err.kind)
    assert.equal("stauts", err.key)
    err = H.raises(c.calls, c, { campaign_id = "seven" })
    assert.equal("campaign_id", err.key)
    assert.matches("'seven'", err.message, 1, true)
    assert.equal(0, requests())
  end)

  describe("kinds by HTTP status, never retried", function()
    local cases = {
      { 401, "auth" }, { 403, "forbidden" }, { 404, "not_found" }, { 422, "validation" },
    }
    for _, case in ipairs(cases) do
      it(case[1] .. " is " .. case[2], function()
        server:script { { status = case[1], errors = { "reason one", "reason two" } } }
        local err = fails(server:client { max_retries = 3 })
        assert.equal(case[2], err.kind)
        assert.equal(case[1], err.status)
        assert.same({ "reason one", "reason two" }, err.errors)
        assert.equal(1, err.attempts)
        assert.equal(1, requests())
        assert.matches("osvi: " .. case[2] .. " (HTTP " .. case[1] .. "): ", tostring(err), 1, true)
        assert.matches("[reason one; reason two]", tostring(err), 1, true)
      end)
    end

    it("a wrong token is auth, from the server itself", function()
      local c = osvi.new { token = "wrong-token-0001", base_url = server.url }
      local err = fails(c)
      assert.equal("auth", err.kind)
      assert.equal(401, err.status)
      assert.falsy(tostring(err):find("wrong-token", 1, true))
    end)

    it("an agent not on the account is not_found, from the server itself", function()
      local err = fails(server:client(), { agent_uuid = "agent_nobody" })
      assert.equal("not_found", err.kind)
      assert.equal(404, err.status)
      assert.matches("(is the agent_uuid on this account?)", err.message, 1, true)
    end)

    it("a redirect is an http error and is not followed", function()
      server:script { { fault = "redirect", status = 302, location = server.url .. "/v1/calls?x=1" } }
      local err = fails(server:client())
      assert.equal("http", err.kind)
      assert.equal(302, err.status)
      assert.equal(1, requests())
    end)

    it("any other status is http", function()
      server:script { { status = 418 } }
      local err = fails(server:client())
      assert.equal("http", err.kind)
      assert.equal(418, err.status)
    end)
  end)

  describe("retries", function()
    it("5xx is server, retried up to max_retries with the last error returned", function()
      server:script { { status = 503, times = 5 } }
      local err = fails(server:client { max_retries = 2 })
      assert.equal("server", err.kind)
      assert.equal(503, err.status)
      assert.equal(3, err.attempts)
      assert.equal(3, requests())
    end)

    it("recovers when a retry succeeds", function()
      server:script { { status = 500 }, { status = 502 }, { status = 504 } }
      local page = server:client { max_retries = 3 }:page {}
      assert.truthy(page)
      assert.equal(4, requests())
    end)

    it("0 turns retries off", function()
      server:script { { status = 500 } }
      local err = fails(server:client { max_retries = 0 })
      assert.equal(1, err.attempts)
      assert.equal(1, requests())
    end)

    it("408 is retried", function()
      server:script { { status = 408 } }
      assert.truthy(server:client():page {})
      assert.equal(2, requests())
    end)

    it("429 honours Retry-After in seconds", function()
      server:script { { status = 429, headers = { ["Retry-After"] = "1" } } }
      local t0 = socket.gettime()
      assert.truthy(server:client { retry_base = 0 }:page {})
      local waited = socket.gettime() - t0
      assert.truthy(waited >= 0.95, "waited " .. waited)
      assert.truthy(waited < 4, "waited " .. waited)
      assert.equal(2, requests())
    end)

    it("429 honours Retry-After as an HTTP date", function()
      local when = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2)
      server:script { { status = 429, headers = { ["Retry-After"] = when } } }
      local t0 = socket.gettime()
      assert.truthy(server:client { retry_base = 0 }:page {})
      local waited = socket.gettime() - t0
      assert.truthy(waited >= 0.9, "waited " .. waited) -- whole seconds: 1 to 2 s
      assert.truthy(waited < 5, "waited " .. waited)
    end)

    it("a Retry-After beyond 120 s is returned at once with retry_after set", function()
      server:script { { status = 429, headers = { ["Retry-After"] = "3600" } } }
      local t0 = socket.gettime()
      local err = fails(server:client())
      assert.truthy(socket.gettime() - t0 < 1)
      assert.equal("rate_limited", err.kind)
      assert.equal(429, err.status)
      assert.equal(3600, err.retry_after)
      assert.equal(1, requests())
      assert.matches("(retry after 3600 s)", tostring(err), 1, true)
    end)

    it("rate_limited after the last attempt keeps retry_after", function()
      server:script { { status = 429, headers = { ["Retry-After"] = "0" }, times = 3 } }
      local err = fails(server:client { max_retries = 2 })
      assert.equal("rate_limited", err.kind)
      assert.equal(0, err.retry_after)
      assert.equal(3, requests())
    end)

    it("backs off exponentially from retry_base", function()
      server:script { { status = 500, times = 3 } }
      local t0 = socket.gettime()
      fails(server:client { max_retries = 2, retry_base = 0.2 })
      local waited = socket.gettime() - t0
      -- 0.2 then 0.4, each with jitter in [half, full]: 0.3 to 0.6 s
      assert.truthy(waited >= 0.3, "waited " .. waited)
      assert.truthy(waited < 2, "waited " .. waited)
    end)

    it("a reset connection is network, and retried", function()
      server:script { { fault = "reset" } }
      assert.truthy(server:client():page {})
      server:reset()
      server:script { { fault = "reset", times = 3 } }
      local err = fails(server:client { max_retries = 2 })
      assert.equal("network", err.kind)
      assert.is_nil(err.status)
      assert.equal(3, err.attempts)
      assert.equal("number", type(err.curl_code))
    end)

    it("an empty reply is network, and retried", function()
      server:script { { fault = "empty", times = 2 } }
      local err = fails(server:client { max_retries = 1 })
      assert.equal("network", err.kind)
      assert.equal(2, requests())
    end)

    it("a body cut off is network, with the status that arrived, and retried", function()
      server:script { { fault = "truncate" } }
      assert.truthy(server:client():page {})
      server:reset()
      server:script { { fault = "truncate" } }
      local err = fails(server:client { max_retries = 0 })
      assert.equal("network", err.kind)
      assert.equal(200, err.status)
    end)

    it("a refused connection is network, and says how many attempts over how long", function()
      local c = osvi.new { token = H.TOKEN, base_url = "http://127.0.0.1:" .. H.closed_port(), retry_base = 0 }
      local err = fails(c)
      assert.equal("network", err.kind)
      assert.equal(3, err.attempts)
      assert.matches("%(3 attempts over %d+%.%d%d s%)$", err.message)
    end)

    it("a slow answer is timeout, and retried", function()
      server:script { { fault = "delay", ms = 1500, times = 2 } }
      local t0 = socket.gettime()
      local err = fails(server:client { timeout = 0.3, max_retries = 1 })
      assert.equal("timeout", err.kind)
      assert.equal(2, err.attempts)
      assert.truthy(socket.gettime() - t0 < 1.5)
    end)
  end)

  describe("bodies", function()
    it("HTML with a 200 is decode, with status 200, not retried", function()
      server:script { { status = 200, body = "<html><body>Welcome</body></html>", content_type = "text/html" } }
      local err = fails(server:client())
      assert.equal("decode", err.kind)
      assert.equal(200, err.status)
      assert.matches("HTML", err.message, 1, true)
      assert.equal(1, requests())
    end)

    it("an HTML error page from a proxy keeps its status kind", function()
      server:script { { status = 502, body = "<html><h1>502 Bad Gateway</h1></html>",
        content_type = "text/html", times = 3 } }
      local err = fails(server:client())
      assert.equal("server", err.kind)
      assert.equal(502, err.status)
      assert.is_nil(err.errors)
      assert.matches("HTML", err.message, 1, true)
    end)

    it("invalid JSON, NaN, and the wrong shapes are decode", function()
      local bodies = {
        '{"success":true,"data":[', 'null', '[]', '"text"', '{"success":true}',
        '{"success":true,"data":{"a":1},"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":1}}',
        '{"success":true,"data":[1],"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":1}}',
        '{"success":true,"data":[{"duration_seconds":NaN}],'
          .. '"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":1}}',
        '{"success":true,"data":[],"meta":{"current_page":"1","total_pages":1,"total_count":0,"per_page":1}}',
        '{"success":true,"data":[],"meta":{"current_page":1.5,"total_pages":1,"total_count":0,"per_page":1}}',
        '{"success":true,"data":[{"campaign_id":9007199254740993}],'
          .. '"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":1}}',
        '{"success":"yes","data":[],"meta":{}}',
      }
      for _, body in ipairs(bodies) do
        server:script { { status = 200, body = body } }
        local err = fails(server:client())
        assert.equal("decode", err.kind, body)
        assert.equal(200, err.status)
      end
    end)

    it("keeps the server's errors as a sequence of strings (found by fuzzing)", function()
    server:script { { status = 422, body = '{"success":false,"errors":["a",null,{"x":1},"b",3]}' },
      { status = 200, body = '{"success":false,"errors":[null,"c"]}' } }
    local c = server:client()
    assert.same({ "a", "b" }, fails(c).errors)
    assert.same({ "c" }, fails(c).errors)
  end)

  it("success: false with a 200 is api, with the server's errors", function()
      server:script { { status = 200, body = '{"success":false,"errors":["account suspended"]}' } }
      local err = fails(server:client())
      assert.equal("api", err.kind)
      assert.equal(200, err.status)
      assert.same({ "account suspended" }, err.errors)
    end)

    it("a body over max_response_bytes is too_large, not retried", function()
      server:script { { fault = "huge", bytes = 200000 } }
      local err = fails(server:client { max_response_bytes = 65536 })
      assert.equal("too_large", err.kind)
      assert.equal(200, err.status)
      assert.equal(1, requests())
    end)
  end)

  it("iteration raises the error object instead of ending the loop", function()
    server:script { { fault = "pass" }, { status = 500, times = 3 } }
    local c = server:client { max_retries = 2 }
    local n = 0
    local ok, err = pcall(function()
      for _ in c:calls { per_page = 50 } do n = n + 1 end
    end)
    assert.is_false(ok)
    assert.equal(50, n)
    assert.equal("server", err.kind)
    assert.equal(500, err.status)
  end)

  it("next_page raises too, and the cursor can ask for the same page again", function()
    server:script { { status = 503, times = 1 } }
    local cur = server:client { max_retries = 0 }:calls { per_page = 10 }
    local err = H.raises(cur.next_page, cur)
    assert.equal("server", err.kind)
    local page = cur:next_page()
    assert.equal(1, page.meta.current_page)
  end)

  it("the client stays usable after every kind of failure", function()
    local c = server:client { max_retries = 0 }
    server:script { { fault = "reset" }, { status = 500 }, { status = 200, body = "<html>" },
      { fault = "huge", bytes = 100000 }, { status = 401 } }
    for _ = 1, 5 do fails(c) end
    local c2 = server:client { max_retries = 0, max_response_bytes = 1024 * 1024 }
    assert.truthy(c2:page {})
    assert.truthy(c:page {})
  end)
end)
