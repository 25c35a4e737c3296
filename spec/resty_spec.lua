-- resty.osvi in a real nginx (Debian's nginx + libnginx-mod-http-lua, OpenResty's LuaJIT),
-- started here with the handlers of spec/support/resty_harness.lua and osvi installed by
-- `make install` (spec/support/nginx.lua). The spec drives nginx over HTTP; nginx runs
-- resty.osvi against the local OSVI server, and every answer is compared with what the C
-- client in this process gets for the same filters or the same fault: the same calls, the same
-- error kinds. Then: keepalive, TLS with a CA made here, a timer and a light-thread job, 50
-- listings at once on one worker, and the exactly-once scenarios of arrivals_spec.lua through
-- nginx with prefetch 0, 1, 4 and 16.
local H = require "spec.support.helper"
local N = require "spec.support.nginx"
local osvi = require "osvi"
local socket = require "socket"

-- make check-valgrind sets OSVI_SPEC_SLACK=10: this process is slower there (nginx is not)
local SLACK = tonumber(os.getenv("OSVI_SPEC_SLACK") or "") or 1

local why = N.unavailable()
if why then
  describe("resty.osvi in nginx", function()
    pending("nginx cannot run here: " .. why)
  end)
  return
end

local CALLS = 500
local server, slow, nginx, pki

-- resty.osvi's options for the local server (as H's server:client() for the C client)
local function options(extra, srv)
  local o = { token = H.TOKEN, base_url = (srv or server).url, timeout = 5, connect_timeout = 2,
              retry_base = 0.01, prefetch = 0 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- Runs a job in nginx; the caller's tables must come back unchanged every time.
local function run(job)
  local answer = nginx:run(job)
  assert.is_true(answer.unchanged, "resty.osvi changed the caller's tables")
  return answer
end

-- Every call of a listing by the C client (raises on failure).
local function c_calls(client, filters)
  local got = {}
  for call in client:calls(filters) do got[#got + 1] = call end
  return got
end

-- The fields of an error both sides must agree on.
local function shape(err)
  if not err then return nil end
  return { kind = err.kind, status = err.status, retry_after = err.retry_after,
           errors = err.errors, key = err.key }
end

local function requests() return server:stats().requests end

describe("resty.osvi in nginx", function()
  setup(function()
    server = H.start { calls = CALLS }
    slow = H.start { calls = 250, latency_ms = 200 }
    pki = N.pki()
    nginx = N.start { upstream = server, pki = pki,
                      env = { OSVI_API_TOKEN = H.TOKEN, OSVI_BASE_URL = server.url } }
  end)

  teardown(function()
    if nginx then
      local log = nginx:error_log()
      nginx:stop()
      assert.falsy(log:find(H.TOKEN, 1, true), "the token is in nginx's error log")
      assert.falsy(log:find("lua entry thread aborted", 1, true) or log:find("%[alert%]")
        or log:find("%[crit%]") or log:find("%[emerg%]"), "nginx's error log has errors:\n" .. log:sub(-3000))
    end
    N.remove_pki(pki)
    if slow then slow:stop() end
    if server then server:stop() end
  end)

  before_each(function() server:reset() end)

  describe("every filter: the same calls as the C client", function()
    local all, agent, campaign, upload
    local function filter_sets()
      all = all or server:calls()
      for _, x in ipairs(all) do
        agent = agent or x.agent_uuid
        if x.campaign_id ~= H.json.null then
          campaign = campaign or x.campaign_id
          upload = upload or x.campaign_upload_id
        end
      end
      return {
        {},
        { status = "picked" },
        { status = { "picked", "voicemail" } },
        { status = "busy,failed", per_page = 30 },
        { agent_uuid = agent },
        { campaign_id = campaign },
        { campaign_upload_id = upload },
        { phone_number = "+91" },
        { phone_number = "98" },
        { call_type = "inbound" },
        { call_type = "outbound", status = "picked" },
        { start_date = "2026-06-30" },
        { end_date = "2026-06-29T12:00:00+05:30" },
        { start_date = "2026-06-28T06:30:00Z", end_date = "2026-06-29" },
        { start_date = 1782700000 },
        { page = 2, per_page = 30 },
        { per_page = 7, limit = 20 },
        { limit = 0 },
        { limit = 150, status = "picked,not_picked" },
      }
    end

    it("client:calls(filters), at prefetch 0 and 4", function()
      local c = server:client()
      for _, f in ipairs(filter_sets()) do
        local want = c_calls(c, f)
        for _, prefetch in ipairs { 0, 4 } do
          local got = run { op = "calls", options = options { prefetch = prefetch }, filters = f }
          assert.is_nil(got.error, got.tostring)
          assert.equal(#want, #got.calls, H.json.encode(f))
          assert.same(want, got.calls, H.json.encode(f))
        end
      end
    end)

    it("client:page(filters) and client:count(filters)", function()
      local c = server:client()
      for _, f in ipairs(filter_sets()) do
        f.limit = nil -- not a filter of page() or count()
        local page = assert(c:page(f))
        local got = run { op = "page", options = options(), filters = f }
        assert.is_nil(got.error, got.tostring)
        assert.same(page.data, got.page.data)
        assert.same(page.meta, got.page.meta)
        assert.equal(200, got.page.fetch.status)
        local n = assert(c:count(f))
        got = run { op = "count", options = options(), filters = f }
        assert.equal(n, got.count, H.json.encode(f))
      end
    end)

    it("a bad filter raises a usage error naming it, before any request, as the C client's", function()
      local c = server:client()
      for _, case in ipairs {
        { op = "calls", f = { stauts = "picked" } }, { op = "page", f = { campaign_id = "seven" } },
        { op = "count", f = { per_page = 500 } }, { op = "page", f = { limit = 5 } },
        { op = "calls", f = { start_date = "2026-07-01", end_date = "2026-06-01" } },
      } do
        local want = H.raises(c[case.op], c, case.f)
        local got = run { op = case.op, options = options(), filters = case.f }
        assert.same(shape(want), shape(got.error))
        assert.equal(want.message, got.error.message)
      end
      assert.equal(0, requests())
    end)

    it("token and base URL from OSVI_API_TOKEN and OSVI_BASE_URL (nginx's env directive)", function()
      local got = run { op = "count", options = {}, filters = {} }
      assert.equal(CALLS, got.count)
      assert.equal("osvi-test-token1", server:stats().log[1].headers["api-token"])
    end)

    it("checks its options as osvi.new does, and names the ones nginx does its own way", function()
      for _, case in ipairs {
        { { timeout = 0 }, "timeout" }, { { prefetch = 17 }, "prefetch" }, { { max_retries = 1.5 }, "max_retries" },
        { { tiemout = 1 }, "tiemout" }, { { token = "short" }, "token" }, { { base_url = "ftp://x" }, "base_url" },
        { { ca_file = "/etc/ssl/x.pem" }, "ca_file" }, { { proxy = "" }, "proxy" }, { { log = 1 }, "log" },
      } do
        local got = run { op = "page", options = options(case[1]) }
        assert.equal("usage", got.error.kind)
        assert.equal(case[2], got.error.key)
      end
      local got = run { op = "page", options = options { ca_file = "/x" } }
      assert.matches("lua_ssl_trusted_certificate", got.error.message, 1, true)
      assert.equal(0, requests())
    end)

    it("refuses what the C client refuses: control characters, a base URL naming /v1, overlong strings; "
      .. "with the same messages, the token never shown", function()
      local url = server.url
      for _, case in ipairs {
        { { user_agent = "osvi\r\nX-Evil: 1" }, "user_agent" },
        { { user_agent = "tab\there" }, "user_agent" },
        { { user_agent = "del\127" }, "user_agent" },
        { { token = "osvi-test\ntoken" }, "token" },
        { { base_url = url .. "\r\nX: y" }, "base_url" },
        { { base_url = url .. "/v1" }, "base_url" },
        { { base_url = url .. "/v1/" }, "base_url" },
        { { base_url = url .. "/proxy/v1/calls" }, "base_url" },
        { { user_agent = string.rep("a", 1025) }, "user_agent" },
        { { base_url = url .. "/" .. string.rep("p", 4096) }, "base_url" },
      } do
        local got = run { op = "page", options = options(case[1]) }
        assert.equal("usage", got.error.kind)
        assert.equal(case[2], got.error.key)
        local ok, want = pcall(osvi.new, options(case[1]))
        assert.is_false(ok)
        assert.equal(want.key, got.error.key)
        -- the same words as the C client, but for where the C client says the base URL itself
        local function words(m) return (m:gsub("^.-: option", "option"):gsub("got '.*'$", "got URL")) end
        assert.equal(words(tostring(want.message)), words(got.error.message))
        assert.falsy(got.error.message:find(H.TOKEN, 1, true))
      end
      assert.equal(0, requests())
    end)

    it("never shows the token, and logs each request with log = true", function()
      local got = run { op = "calls", options = options { log = true }, filters = { per_page = 100, limit = 200 } }
      assert.falsy(got.client:find(H.TOKEN, 1, true))
      assert.matches("resty.osvi.Client (0x", got.client, 1, true)
      assert.matches("osvi: GET /v1/calls?page=2&per_page=100 -> 200, attempt 1", nginx:error_log(), 1, true)
      server:script { { status = 401 } }
      got = run { op = "page", options = options() }
      assert.falsy(got.tostring:find(H.TOKEN, 1, true))
    end)
  end)

  describe("every fault of the local server: the same error as the C client", function()
    -- {name, script, options (both clients), filters}; the C client runs first, then resty.osvi
    -- on the same script, and both must end alike: the same kind, status, retry_after and
    -- errors, the same number of requests at the server, the same message for an answer.
    local html = "<html><body>Welcome</body></html>"
    local cases = {
      { "401", { { status = 401, errors = { "reason one", "reason two" } } } },
      { "403", { { status = 403 } } },
      { "404 (an agent not on the account)", nil, {}, { agent_uuid = "agent_nobody" } },
      { "422", { { status = 422, errors = { "per_page is invalid" } } } },
      { "418", { { status = 418 } } },
      { "a wrong token", nil, { token = "wrong-token-0001" } },
      { "503 until the retries are spent", { { status = 503, times = 5 } }, { max_retries = 2 } },
      { "500, 502, 504, then an answer", { { status = 500 }, { status = 502 }, { status = 504 } },
        { max_retries = 3 } },
      { "408, then an answer", { { status = 408 } } },
      { "429 with Retry-After 0, three times", { { status = 429, headers = { ["Retry-After"] = "0" }, times = 3 } } },
      { "429 with Retry-After 3600", { { status = 429, headers = { ["Retry-After"] = "3600" } } } },
      { "429 with Retry-After as a date in the past", { { status = 429,
        headers = { ["Retry-After"] = "Thu, 01 Jan 2015 00:00:00 GMT" } } } },
      { "a redirect (302), not followed",
        { { fault = "redirect", status = 302, location = "http://127.0.0.2:9/v1/calls" } } },
      { "a redirect (308) to https", { { fault = "redirect", status = 308, location = "https://127.0.0.1:1/" } } },
      { "a reset, then an answer", { { fault = "reset" } } },
      { "resets until the retries are spent", { { fault = "reset", times = 3 } }, { max_retries = 2 } },
      { "empty replies", { { fault = "empty", times = 2 } }, { max_retries = 1 } },
      { "a body cut off, then an answer", { { fault = "truncate" } } },
      { "a body cut off, no retries", { { fault = "truncate" } }, { max_retries = 0 } },
      { "a slow answer (delay) past the timeout", { { fault = "delay", ms = 1500, times = 2 } },
        { timeout = 0.3, max_retries = 1 } },
      { "a short delay within the timeout", { { fault = "delay", ms = 100 } } },
      { "a drip past the timeout", { { fault = "drip", interval_ms = 100 } }, { timeout = 1, max_retries = 0 } },
      { "a drip under the low-speed limit", { { fault = "drip", interval_ms = 1000 } },
        { timeout = 20, stall_timeout = 1, max_retries = 0 } },
      { "a drip fast enough", { { fault = "drip", interval_ms = 0 } }, {}, { per_page = 3 } },
      { "a Content-Length over max_response_bytes", { { fault = "huge", bytes = 200000 } },
        { max_response_bytes = 65536 } },
      { "an endless chunked body", { { fault = "huge", bytes = -1, chunked = true } },
        { max_response_bytes = 1024 * 1024 } },
      { "a chunked body within the cap (not JSON)", { { fault = "huge", bytes = 100000, chunked = true } } },
      { "a long body within the cap (not JSON)", { { fault = "huge", bytes = 100000 } } },
      { "HTML with a 200", { { status = 200, body = html, content_type = "text/html" } } },
      { "a proxy's HTML 502 page", { { status = 502, body = "<html><h1>502 Bad Gateway</h1></html>",
        content_type = "text/html", times = 3 } } },
      { "success: false with a 200", { { status = 200, body = '{"success":false,"errors":["account suspended"]}' } } },
      { "not JSON", { { status = 200, body = '{"success":true,"data":[' } } },
      { "the wrong page", { { status = 200, body = H.ids_page({ "a" }, 3, 3) } }, {}, { page = 1 } },
      { "an answer that closes its connection", { { fault = "close_after" } } },
      { "arrivals with the answer", { { fault = "arrive", arrive = 5 } } },
    }

    for _, case in ipairs(cases) do
      local name, script, opts, filters = case[1], case[2], case[3] or {}, case[4] or {}
      it(name, function()
        local c = server:client(opts)
        if script then server:script(script) end
        local page, want = c:page(filters)
        local want_requests = requests()
        server:reset()
        if script then server:script(script) end
        local got = run { op = "page", options = options(opts), filters = filters }
        assert.same(shape(want), shape(got.error))
        if want then
          assert.equal(want.attempts, got.error.attempts)
          if want.kind ~= "network" and want.kind ~= "timeout" then
            -- messages from the same decoder; the time the attempts took
            -- differs from run to run
            local function untimed(m) return (m:gsub(" over [%d.]+ s%)", ")")) end
            assert.equal(untimed(tostring(want)), untimed(got.tostring))
          end
        else
          assert.same(page.data, got.page.data)
        end
        assert.equal(want_requests, requests())
      end)
    end

    it("a refused connection is network, retried", function()
      local url = "http://127.0.0.1:" .. H.closed_port()
      local _, want = osvi.new { token = H.TOKEN, base_url = url, retry_base = 0 }:page {}
      local got = run { op = "page", options = { token = H.TOKEN, base_url = url, retry_base = 0 } }
      assert.same(shape(want), shape(got.error))
      assert.equal("network", got.error.kind)
      assert.equal(3, got.error.attempts)
    end)

    it("a host name without a resolver is network, not retried, and says so", function()
      local got = run { op = "page", options = options { base_url = "http://osvi.invalid:80" } }
      assert.equal("network", got.error.kind)
      assert.equal(1, got.error.attempts)
      assert.matches("resolver", got.error.message, 1, true)
    end)

    it("a body in a content encoding not asked for is network, not retried (no gzip here)", function()
      server:script { { status = 200, body = "\31\139\8\0", headers = { ["Content-Encoding"] = "gzip" } } }
      local got = run { op = "page", options = options() }
      assert.equal("network", got.error.kind)
      assert.equal(1, requests())
      assert.is_nil(server:stats().log[1].headers["accept-encoding"])
    end)

    it("iteration raises the error object; the cursor can go on after it", function()
      server:script { { fault = "pass" }, { status = 500, times = 3 } }
      local got = run { op = "calls", options = options { max_retries = 2 }, filters = { per_page = 50 }, ids = true }
      assert.equal(50, #got.ids)
      assert.equal("server", got.error.kind)
      assert.equal(500, got.error.status)
      assert.matches("^osvi: server %(HTTP 500%)", got.tostring)
    end)

    it("a pooled connection found dead is sent again on a new one, within the budget", function()
      -- the first answer leaves its connection in the pool; the next request on it is reset
      -- before any answer: sent again at once (as libcurl does), counted as an attempt
      for _, retries in ipairs { 0, 2 } do
        server:reset()
        local script = { { fault = "pass" }, { fault = "reset" } }
        local c = server:client { max_retries = retries }
        server:script(script)
        assert.truthy(c:page {})
        local page, want = c:page {}
        local want_requests = requests()
        server:reset()
        server:script(script)
        local got = nginx:run { op = "page", options = options { max_retries = retries } }
        assert.truthy(got.page)
        got = nginx:run { op = "page", options = options { max_retries = retries } }
        assert.same(shape(want), shape(got.error))
        assert.equal(want_requests, requests())
        if page then -- the second request of the attempt went on a new connection
          assert.equal(2, page.fetch.attempts)
          assert.equal(2, got.page.fetch.attempts)
          local log = server:stats().log
          assert.equal(log[1].connection, log[2].connection)
          assert.are_not.equal(log[2].connection, log[3].connection)
        else
          assert.equal("network", got.error.kind)
          assert.equal(1, got.error.attempts)
        end
      end
    end)

    it("keeps the C client's retry policy: Retry-After in seconds is waited", function()
      server:script { { status = 429, headers = { ["Retry-After"] = "1" } } }
      local got = run { op = "page", options = options { retry_base = 0 } }
      assert.truthy(got.page)
      assert.truthy(got.elapsed >= 0.95, "waited " .. got.elapsed)
      assert.equal(2, requests())
    end)
  end)

  describe("keepalive", function()
    it("3 pages over 1 connection; the next listing reuses the pooled connection", function()
      local job = { op = "calls", options = options(), filters = { per_page = 100, limit = 300 }, ids = true }
      local got = run(job)
      assert.equal(300, #got.ids)
      local stats = server:stats()
      assert.equal(3, stats.requests)
      assert.equal(1, stats.connections)
      local conn = stats.log[1].connection
      for _, r in ipairs(stats.log) do assert.equal(conn, r.connection) end
      got = run(job)
      assert.equal(300, #got.ids)
      stats = server:stats()
      assert.equal(6, stats.requests)
      assert.equal(1, stats.connections)
      for _, r in ipairs(stats.log) do assert.equal(conn, r.connection) end
    end)

    it("an answer with Connection: close is not pooled", function()
      server:script { { fault = "close_after" } }
      run { op = "calls", options = options(), filters = { per_page = 100, limit = 300 }, ids = true }
      local log = server:stats().log
      assert.equal(3, #log)
      assert.are_not.equal(log[1].connection, log[2].connection)
      assert.equal(log[2].connection, log[3].connection)
    end)
  end)

  describe("TLS (nginx in front of the local server, a CA made here)", function()
    local function tls_options(name, extra)
      local o = options(extra)
      o.base_url = nginx.tls[name]
      return o
    end

    it("verified: the same calls as the C client trusting the same CA, pages over one connection", function()
      local want = c_calls(osvi.new { token = H.TOKEN, base_url = nginx.tls.good, ca_file = pki.ca, prefetch = 0 },
        { per_page = 100, limit = 300 })
      local got = run { op = "calls", options = tls_options "good", filters = { per_page = 100, limit = 300 } }
      assert.is_nil(got.error, got.tostring)
      assert.same(want, got.calls)
      -- resty.osvi's three requests are the last three on the TLS server: one connection
      local lines, port = nginx:tls_log(), tonumber(nginx.tls.good:match("(%d+)$"))
      local mine = {}
      for _, l in ipairs(lines) do if l.port == port then mine[#mine + 1] = l end end
      local n = #mine
      assert.equal(mine[n].connection, mine[n - 2].connection)
      assert.same({ 1, 2, 3 }, { mine[n - 2].requests, mine[n - 1].requests, mine[n].requests })
    end)

    it("a certificate for another host name is refused: network, not retried", function()
      local _, want = osvi.new { token = H.TOKEN, base_url = nginx.tls.wrong, ca_file = pki.ca }:page {}
      local got = run { op = "page", options = tls_options "wrong" }
      assert.same(shape(want), shape(got.error))
      assert.equal(1, got.error.attempts)
      assert.matches("host mismatch", got.error.message, 1, true)
      assert.equal(0, requests())
    end)

    it("a certificate of a CA not trusted (not in lua_ssl_trusted_certificate) is refused", function()
      local _, want = osvi.new { token = H.TOKEN, base_url = nginx.tls.untrusted, ca_file = pki.ca }:page {}
      local got = run { op = "page", options = tls_options "untrusted" }
      assert.same(shape(want), shape(got.error))
      assert.equal("network", got.error.kind)
      assert.equal(1, got.error.attempts)
      assert.equal(0, requests())
    end)

    it("prefetching over TLS", function()
      local got = run { op = "calls", options = tls_options("good", { prefetch = 4 }), filters = { per_page = 40 },
                        ids = true }
      assert.equal(CALLS, #got.ids)
      assert.equal(13, got.stats.pages)
    end)
  end)

  describe("where OpenResty runs code", function()
    local function want_ids(filters)
      local ids = {}
      for _, call in ipairs(c_calls(server:client(), filters)) do ids[#ids + 1] = call.call_id end
      return ids
    end

    it("a timer job (ngx.timer.at: no request, cosockets and ngx.sleep only)", function()
      server:script { { status = 503 } } -- a retry, slept with ngx.sleep in the timer
      local status = nginx:request("POST", "/timer", H.json.encode {
        op = "calls", options = options { prefetch = 4 }, filters = { status = "picked" }, ids = true })
      assert.equal(202, status)
      local body
      for _ = 1, 200 do
        local s, b = nginx:request("GET", "/timer/result")
        if s == 200 then body = b break end
        socket.sleep(0.05)
      end
      assert.truthy(body, "the timer's job did not finish")
      local got = H.json.decode(body)
      assert.is_true(got.in_timer)
      assert.is_nil(got.error, got.tostring)
      assert.same(want_ids { status = "picked" }, got.ids)
    end)

    it("light threads: three jobs at once in one request", function()
      local got = nginx:run({ jobs = {
        { op = "calls", options = options { prefetch = 4 }, filters = { status = "busy" }, ids = true },
        { op = "calls", options = options { prefetch = 0 }, filters = { call_type = "inbound" }, ids = true },
        { op = "count", options = options(), filters = { status = "failed" } },
      } }, "/thread")
      assert.same(want_ids { status = "busy" }, got.results[1].ids)
      assert.same(want_ids { call_type = "inbound" }, got.results[2].ids)
      assert.equal(server:client():count { status = "failed" }, got.results[3].count)
    end)

    it("break after a few calls: the cursor is closed, its prefetched requests stopped", function()
      local got = run { op = "calls", options = options { prefetch = 4 }, filters = { per_page = 20 },
                        ids = true, break_after = 5 }
      assert.equal(5, #got.ids)
      assert.matches("resty.osvi.Cursor (0x", got.cursor, 1, true)
      assert.truthy(got.stats.requests <= 5, "requests " .. got.stats.requests)
    end)
  end)

  describe("one worker, the server answering after 200 ms", function()
    before_each(function() slow:reset() end)

    local function listing(prefetch)
      return H.json.encode { op = "calls", options = options({ prefetch = prefetch }, slow), filters = {}, ids = true }
    end

    it("prefetch overlaps the pages of a listing", function()
      local t = {}
      for _, prefetch in ipairs { 0, 4 } do
        local job = H.json.decode(listing(prefetch))
        job.filters = { per_page = 50 }
        local got = run(job)
        assert.equal(250, #got.ids)
        t[prefetch] = got.elapsed
      end
      print(string.format("# 5 pages at 200 ms: prefetch 0 %.0f ms, prefetch 4 %.0f ms", t[0] * 1000, t[4] * 1000))
      assert.truthy(t[0] >= 1.0, "prefetch 0: " .. t[0])
      assert.truthy(t[4] < 0.7 * SLACK, "prefetch 4: " .. t[4])
      assert.truthy(slow:stats().max_inflight >= 4)
    end)

    it("50 listings of 250 calls at once finish in about the time of one; a /ping meanwhile is quick", function()
      local body = listing(4)
      local t0 = socket.gettime()
      local status, one = nginx:request("POST", "/run", body)
      local t_one = socket.gettime() - t0
      assert.equal(200, status)
      assert.equal(250, #H.json.decode(one).ids)
      slow:reset()

      local conns = {}
      t0 = socket.gettime()
      for i = 1, 50 do conns[i] = nginx:send("POST", "/run", body) end
      local sent = socket.gettime() - t0
      -- pings while the 50 wait for the API (100 ms in) and through the whole run
      local pings = {}
      socket.sleep(math.max(0, 0.1 - sent))
      for _ = 1, 8 do
        local p0 = socket.gettime()
        local s, b = nginx:request("GET", "/ping")
        pings[#pings + 1] = (socket.gettime() - p0) * 1000
        assert.equal(200, s)
        assert.equal("pong\n", b)
        socket.sleep(0.05)
      end
      local bad = 0
      for i = 1, 50 do
        local s, b = N.read_response(conns[i])
        if s ~= 200 or #H.json.decode(b).ids ~= 250 then bad = bad + 1 end
      end
      local t_all = socket.gettime() - t0
      local stats = slow:stats()
      local max_ping = 0
      for _, p in ipairs(pings) do max_ping = math.max(max_ping, p) end
      print(string.format("# one listing %.0f ms; 50 at once %.0f ms (%d API requests, %d in flight at most); "
        .. "/ping %.1f ms 100 ms in, at most %.1f ms over the run", t_one * 1000, t_all * 1000,
        stats.requests, stats.max_inflight, pings[1], max_ping))
      assert.equal(0, bad)
      assert.equal(150, stats.requests)
      assert.truthy(stats.max_inflight >= 50, "in flight at once: " .. stats.max_inflight)
      assert.truthy(t_all < 2 * t_one * SLACK, string.format("one %.3f s, 50 at once %.3f s", t_one, t_all))
      assert.truthy(pings[1] < 50 * SLACK, string.format("/ping took %.1f ms", pings[1]))
    end)
  end)

  describe("exactly once through nginx, calls arriving (arrivals_spec.lua's scenarios)", function()
    local PER_PAGE, LIMIT = 50, 120
    local PREFETCH = { 0, 1, 4, 16 }

    local function count_status(stats, status)
      local n = 0
      for _, r in ipairs(stats.log) do if r.status == status then n = n + 1 end end
      return n
    end

    local function random_counts(seed, n)
      local draw, counts = H.seeded(seed), {}
      for i = 1, n do counts[i] = draw(0, 25) end
      return counts
    end

    local SCENARIOS = {
      { "page 2 gets a 503, and 7 calls arrive before its retry",
        function() server:script { { page = 2, status = 503 }, { page = 2, fault = "pass", arrive = 7 } } end,
        function(stats)
          assert.equal(7, stats.arrived)
          assert.equal(1, count_status(stats, 503))
        end },
      { "page 2 is slow (300 ms), and 7 calls arrive meanwhile (at the first request for page 4)",
        function() server:config { slow_page = 2, slow_ms = 300, burst_page = 4, burst_calls = 7 } end,
        function(stats) assert.equal(7, stats.arrived) end },
      { "page 2 is slow (300 ms), and 7 calls arrive while it waits",
        function()
          server:config { slow_page = 2, slow_ms = 300 }
          server:script { { page = 2, fault = "arrive", arrive = 7 } }
        end,
        function(stats) assert.equal(7, stats.arrived) end },
    }
    local function each_request(name, arrange, arrived)
      for _, late in ipairs { false, true } do
        SCENARIOS[#SCENARIOS + 1] = { name .. (late and ", and page 3 is answered late (150 ms)" or ""),
          function()
            arrange()
            if late then server:config { slow_page = 3, slow_ms = 150 } end
          end, arrived }
      end
    end
    each_request("7 calls arrive before each page request",
      function() server:config { arrivals_per_request = 7 } end,
      function(stats) assert.equal(7 * stats.requests, stats.arrived) end)
    each_request("20 calls arrive before each page request",
      function() server:config { arrivals_per_request = 20 } end,
      function(stats) assert.equal(20 * stats.requests, stats.arrived) end)
    for _, seed in ipairs { 1, 2, 3 } do
      local counts = random_counts(seed, 100)
      each_request("0..25 calls (series of seed " .. seed .. ") arrive before each page request",
        function()
          local script = {}
          for i, k in ipairs(counts) do script[i] = { fault = "arrive", arrive = k } end
          server:script(script)
        end,
        function(stats)
          local sum = 0
          for i = 1, stats.requests do sum = sum + counts[i] end
          assert.equal(sum, stats.arrived)
        end)
    end
    local LIMITED = {
      SCENARIOS[1],
      { "page 2 is slow (300 ms), and 7 calls arrive meanwhile (at the first request for page 3)",
        function() server:config { slow_page = 2, slow_ms = 300, burst_page = 3, burst_calls = 7 } end,
        function(stats) assert.equal(7, stats.arrived) end },
      { "7 calls arrive before each page request after the first",
        function() server:script { { page = 1, fault = "pass" }, { fault = "arrive", arrive = 7, times = 100 } } end,
        function(stats) assert.equal(7 * (stats.requests - 1), stats.arrived) end },
    }

    local function page_through(arrange, prefetch, limit)
      arrange()
      local before = server:calls()
      assert.equal(CALLS, #before)
      local got = run { op = "calls", options = options { prefetch = prefetch },
                        filters = { per_page = PER_PAGE, limit = limit }, ids = true }
      local problems = H.listing_problems(before, server:calls(), got.ids, limit)
      assert.truthy(not got.error and not problems, string.format("prefetch %d: %s%s", prefetch,
        got.error and "failed after " .. #got.ids .. " calls: " .. got.tostring .. "; " or "",
        problems or "no call missing or repeated"))
      return before, got.ids
    end

    for _, scenario in ipairs(SCENARIOS) do
      for _, prefetch in ipairs(PREFETCH) do
        it(scenario[1] .. "; prefetch " .. prefetch, function()
          page_through(scenario[2], prefetch)
          scenario[3](server:idle())
        end)
      end
    end
    for _, scenario in ipairs(LIMITED) do
      for _, prefetch in ipairs(PREFETCH) do
        it(scenario[1] .. "; prefetch " .. prefetch .. ", limit " .. LIMIT, function()
          local before, got = page_through(scenario[2], prefetch, LIMIT)
          assert.equal(LIMIT, #got)
          for i = 1, LIMIT do assert.equal(before[i].call_id, got[i]) end
          scenario[3](server:idle())
        end)
      end
    end
  end)
end)
