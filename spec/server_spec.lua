-- The local server's parts (spec/support/osvi_server.lua), one by one and
-- without sockets: its command line, --now and the dates of its data set,
-- the query parser, the filters and their date bounds, page bodies, the
-- control API; then as a process: started again on the same port at once
-- while a client keeps its connection alive, and exiting with its parent
-- only when asked to.
--
-- The module needs Lua 5.3 or later (integer division, bitwise operators):
-- under Lua 5.1 and LuaJIT (make test-versions) its parts are not loaded
-- here, and only the process specs run, with the server under H.SERVER_LUA.
local H = require "spec.support.helper"
local socket = require "socket"
local cjson = require "cjson"
local osvi = require "osvi"

local NOW = H.SERVER_NOW -- "2026-06-30T20:00:00+05:30"

local function alive(pid)
  return H.execute("kill -0 " .. pid .. " 2>/dev/null")
end

-- Starts the server in the background of a shell that exits once it has
-- printed its first line (as `nohup ... &` in a script), with these
-- arguments; returns its pid and that line.
local function start_orphan(args)
  local out = os.tmpname()
  local p = assert(io.popen(string.format("%s spec/support/server.lua %s >%s 2>&1 </dev/null & "
    .. "for _ in $(seq 100); do [ -s %s ] && break; sleep 0.05; done; echo $!", H.SERVER_LUA, args, out, out)))
  local pid = p:read("*l")
  p:close()
  local f = io.open(out)
  local line = f and f:read("*l")
  if f then f:close() end
  os.remove(out)
  return pid, line
end

describe("the local server, as a process", function()
  it("starts again at once on the port it had, while a client kept a connection alive", function()
    local pid, line = start_orphan("--port 0 --calls 10")
    local port = tonumber((line or ""):match("^osvi%-server listening on http://127%.0%.0%.1:(%d+) pid="))
    assert.truthy(port, line)
    -- a keep-alive connection that has carried a request: when the server
    -- is stopped, its end is the one that closes first (TIME_WAIT)
    local c = assert(socket.connect("127.0.0.1", port))
    c:settimeout(5)
    assert(c:send("GET /v1/calls HTTP/1.1\r\nHost: x\r\nAPI-Token: " .. H.TOKEN .. "\r\n\r\n"))
    assert.equal("HTTP/1.1 200 OK", c:receive("*l"))
    os.execute("kill " .. pid)
    for _ = 1, 100 do
      if not alive(pid) then break end
      socket.sleep(0.02)
    end
    local pid2, line2 = start_orphan("--port " .. port .. " --calls 10")
    os.execute("kill " .. pid2 .. " 2>/dev/null")
    c:close()
    assert.equal(string.format("osvi-server listening on http://127.0.0.1:%d pid=%s", port, pid2), line2)
  end)

  it("stays when the process that started it exits; with --exit-with-parent, exits too", function()
    local stays, line = start_orphan("--port 0 --calls 1")
    assert.truthy(line and line:find("listening", 1, true), line)
    local leaves, line2 = start_orphan("--port 0 --calls 1 --exit-with-parent")
    assert.truthy(line2 and line2:find("listening", 1, true), line2)
    -- the parent watch runs at least once a second
    local gone
    for _ = 1, 60 do
      gone = not alive(leaves)
      if gone then break end
      socket.sleep(0.05)
    end
    local stayed = alive(stays)
    os.execute("kill " .. stays .. " " .. leaves .. " 2>/dev/null")
    assert.is_true(gone, "the server with --exit-with-parent outlived its parent")
    assert.is_true(stayed, "the server without --exit-with-parent exited with its parent")
  end)

  it("refuses a bad --now, and says so", function()
    local p = io.popen(H.SERVER_LUA .. " spec/support/server.lua --now yesterday 2>&1; echo \"@@$?\"")
    local out = p:read("*a")
    p:close()
    assert.matches("osvi-server: bad value for --now: yesterday", out, 1, true)
    assert.matches("@@2\n$", out)
  end)
end)

if H.VERSION < 5.3 then
  describe("the local server's parts", function()
    it("need Lua 5.3 or later (they are tested under Lua 5.4 by make test)", function()
      pending("Lua " .. H.VERSION)
    end)
  end)
  return
end

local server = require "spec.support.osvi_server"

-- A server of n calls (default 60) with its dates pinned at NOW, unless opts say otherwise.
local function new(opts)
  local o = { calls = 60, seed = 1, now = assert(server.parse_when(NOW)) }
  for k, v in pairs(opts or {}) do o[k] = v end
  return server.new(o)
end

local function api(app, query, token)
  local status, body, headers = app.api_result { method = "GET", path = "/v1/calls", query = query or "",
    headers = { ["api-token"] = token or H.TOKEN } }
  return status, cjson.decode(body), headers
end

local function all_calls(app)
  return cjson.decode("[" .. app.listing_text() .. "]")
end

local function count(list, pred)
  local n = 0
  for _, x in ipairs(list) do if pred(x) then n = n + 1 end end
  return n
end

describe("the local server's parts", function()
  describe("command line", function()
    it("has a default for every option; --now and --exit-with-parent are off", function()
      local opts = assert(server.parse_args {})
      assert.same({ host = "127.0.0.1", port = 0, calls = 300, seed = 1, token = "osvi-test-token1",
        latency_ms = 0, exit_with_parent = false }, opts)
    end)

    it("takes --name value and --name=value; --exit-with-parent is a switch", function()
      local opts = assert(server.parse_args { "--port", "8080", "--calls=5", "--exit-with-parent",
        "--now", NOW, "--latency-ms", "2.5" })
      assert.equal(8080, opts.port)
      assert.equal(5, opts.calls)
      assert.is_true(opts.exit_with_parent)
      assert.equal(osvi.time(NOW), opts.now)
      assert.equal(2.5, opts.latency_ms)
    end)

    it("returns the usage and status 0 for --help, a message and status 2 for a bad word", function()
      local opts, text, status = server.parse_args { "--help" }
      assert.is_nil(opts)
      assert.equal(0, status)
      assert.equal(server.USAGE, text)
      assert.matches("--exit-with-parent", text, 1, true)
      for _, argv in ipairs { { "--nope" }, { "--exit-with-parent=yes" }, { "stray" } } do
        opts, text, status = server.parse_args(argv)
        assert.is_nil(opts)
        assert.equal(2, status)
        assert.equal("osvi-server: unknown argument '" .. argv[1] .. "'\n" .. server.USAGE, text)
      end
      for _, argv in ipairs { { "--port", "65536" }, { "--calls", "-1" }, { "--now", "2026-02-30" },
          { "--now", "2026-06-30T20:00:00" }, { "--port" } } do
        opts, text, status = server.parse_args(argv)
        assert.is_nil(opts)
        assert.equal(2, status)
        assert.matches("^osvi%-server: bad value for " .. argv[1]:gsub("%-", "%%-"), text)
      end
    end)

    it("--now: a timestamp with an offset, a date (midnight IST) or epoch seconds", function()
      assert.equal(osvi.time("2026-06-30T20:00:00+05:30"), server.parse_when("2026-06-30T14:30:00Z"))
      assert.equal(osvi.time("2026-06-30T20:00:00+05:30"), server.parse_when("2026-06-30T20:00:00.999+05:30"))
      assert.equal(osvi.time("2026-06-30"), server.parse_when("2026-06-30"))
      assert.equal(1782829800, server.parse_when("1782829800"))
      assert.is_nil(server.parse_when("30/06/2026"))
    end)
  end)

  describe("the data set's dates", function()
    it("end at --now: the newest call was created then, the others before it", function()
      local app = new()
      assert.equal(osvi.time(NOW), app.newest)
      local calls = all_calls(app)
      assert.equal(NOW, calls[1].created_at)
      for i = 2, #calls do
        assert.truthy(calls[i].created_at < calls[i - 1].created_at, "call " .. i)
      end
    end)

    it("end at the time of start-up without --now", function()
      local before = os.time()
      local app = server.new { calls = 3 }
      local after = os.time()
      assert.truthy(app.newest >= before and app.newest <= after)
      assert.equal(server.format_ist(app.newest), all_calls(app)[1].created_at)
    end)

    it("move with --now, and nothing else does", function()
      local a, b = all_calls(new()), all_calls(new { now = osvi.time(NOW) + 86400 * 150 + 7 })
      assert.equal(#a, #b)
      for i = 1, #a do
        assert.equal(a[i].call_id, b[i].call_id)
        assert.equal(a[i].status, b[i].status)
        assert.equal(a[i].duration_seconds, b[i].duration_seconds)
        assert.equal(osvi.time(a[i].created_at) + 86400 * 150 + 7, osvi.time(b[i].created_at))
      end
    end)

    it("cover about 5 minutes per call", function()
      local calls = all_calls(new { calls = 1000 })
      local span = osvi.time(calls[1].created_at) - osvi.time(calls[#calls].created_at)
      assert.truthy(span > 999 * 250 and span < 999 * 350, span)
    end)
  end)

  describe("query parser", function()
    it("percent-decodes, keeps '+' as it is, keeps a repeated name's last value", function()
      assert.same({ status = "picked,busy", phone_number = "+91 9", page = "2", flag = "" },
        server.parse_query("status=picked%2Cbusy&phone_number=+91%209&page=1&page=2&flag"))
      assert.same({}, server.parse_query(""))
      assert.same({ a = "%zz" }, server.parse_query("a=%zz"))
    end)

    it("reads a status list, or refuses it whole", function()
      assert.same({ picked = true, busy = true }, server.parse_status_list("picked,busy"))
      assert.is_nil(server.parse_status_list("picked,"))
      assert.is_nil(server.parse_status_list("picked,nope"))
    end)
  end)

  describe("date bounds", function()
    local bound = server.parse_bound
    it("a date is a whole IST day: its first millisecond below, its last above", function()
      local midnight = osvi.time("2026-06-01") * 1000
      assert.equal(midnight, bound("2026-06-01", false))
      assert.equal(midnight + 86399999, bound("2026-06-01", true))
    end)

    it("a timestamp is an instant; a lower bound inside a millisecond rounds up", function()
      local t = osvi.time("2026-06-12T04:00:04Z") * 1000
      assert.equal(t, bound("2026-06-12T09:30:04+05:30", false))
      assert.equal(t + 123, bound("2026-06-12T04:00:04.123Z", true))
      assert.equal(t + 124, bound("2026-06-12T04:00:04.1231Z", false))
      assert.equal(t + 123, bound("2026-06-12T04:00:04.1239Z", true))
    end)

    it("refuses what is not a date", function()
      for _, s in ipairs { "2026-02-30", "2026-13-01", "2026-6-1", "2026-06-01T25:00:00Z",
          "2026-06-01T09:30:04", "2026-06-01T09:30:04+5:30", "2026-06-01T09:30:04.Z" } do
        assert.is_nil(bound(s, false), s)
      end
      assert.truthy(bound("2024-02-29", false))
    end)
  end)

  describe("the API", function()
    local app, calls
    setup(function()
      app = new { calls = 250 }
      calls = all_calls(app)
    end)

    it("answers a page with its meta, 25 calls by default, per_page capped at 100", function()
      local status, page = api(app, "")
      assert.equal(200, status)
      assert.equal(25, #page.data)
      assert.same({ current_page = 1, total_pages = 10, total_count = 250, per_page = 25 }, page.meta)
      status, page = api(app, "per_page=500&page=3")
      assert.equal(200, status)
      assert.equal(50, #page.data)
      assert.equal(calls[201].call_id, page.data[1].call_id)
      assert.same({ current_page = 3, total_pages = 3, total_count = 250, per_page = 100 }, page.meta)
      status, page = api(app, "page=9&per_page=100") -- beyond the end: no calls, the same meta
      assert.equal(200, status)
      assert.same({}, page.data)
      assert.equal(3, page.meta.total_pages)
    end)

    it("filters: status list, partial phone number, call type, agent, campaign", function()
      local function check(query, pred)
        local status, page = api(app, query .. "&per_page=100")
        assert.equal(200, status, query)
        assert.equal(count(calls, pred), page.meta.total_count, query)
        assert.truthy(page.meta.total_count > 0, query)
        for _, c in ipairs(page.data) do assert.truthy(pred(c), query) end
      end
      check("status=busy%2Cfailed", function(c) return c.status == "busy" or c.status == "failed" end)
      local prefix = calls[5].phone_number:sub(1, 6)
      check("phone_number=" .. prefix:gsub("%+", "%%2B"), function(c) return c.phone_number:find(prefix, 1, true) end)
      check("call_type=inbound", function(c) return c.call_type == "inbound" end)
      check("agent_uuid=" .. calls[1].agent_uuid, function(c) return c.agent_uuid == calls[1].agent_uuid end)
      check("campaign_id=7&campaign_upload_id=22",
        function(c) return c.campaign_id == 7 and c.campaign_upload_id == 22 end)
    end)

    it("date bounds apply to call_picked_at, inclusive; calls never picked are out", function()
      local day = calls[1].created_at:sub(1, 10)
      local _, page = api(app, "start_date=" .. day .. "&end_date=" .. day .. "&per_page=100")
      local want = count(calls, function(c)
        return c.call_picked_at ~= cjson.null and c.call_picked_at:sub(1, 10) == day
      end)
      assert.truthy(want > 0)
      assert.equal(want, page.meta.total_count)
      -- an instant: exactly the calls picked at or after it
      local at = calls[10].call_picked_at ~= cjson.null and calls[10].call_picked_at or calls[2].call_picked_at
      _, page = api(app, "start_date=" .. at:gsub("%+", "%%2B") .. "&per_page=100")
      assert.equal(count(calls, function(c)
        return c.call_picked_at ~= cjson.null and osvi.time(c.call_picked_at) >= osvi.time(at)
      end), page.meta.total_count)
    end)

    it("401 without the token, 422 naming every bad parameter in order, 404 for an unknown agent", function()
      local status, body = api(app, "", "osvi-wrong-tok16")
      assert.equal(401, status)
      assert.same({ success = false, errors = { "invalid or missing API-Token" } }, body)
      status, body = api(app, "per_page=x&page=0&status=bogus&end_date=2026-02-30")
      assert.equal(422, status)
      assert.same({ "status is invalid", "end_date is invalid", "page is invalid", "per_page is invalid" },
        body.errors)
      status, body = api(app, "agent_uuid=agent_NotOnThisAccount")
      assert.equal(404, status)
      assert.same({ "agent not found" }, body.errors)
      status = app.api_result { method = "POST", path = "/v1/calls", query = "", headers = {} }
      assert.equal(405, status)
    end)
  end)

  describe("page bodies", function()
    it("cut pages out of the data set's text, then close them with the meta", function()
      local app = new { calls = 7 }
      local calls = all_calls(app)
      local data, meta = app.page_body({ 2, 3, 5 }, 1, 2)
      assert.same({ calls[2], calls[3] }, cjson.decode("[" .. data .. "]"))
      assert.equal('],"meta":{"current_page":1,"total_pages":2,"total_count":3,"per_page":2}}', meta)
      data = app.page_body({ 2, 3, 5 }, 2, 2)
      assert.same({ calls[5] }, cjson.decode("[" .. data .. "]"))
      data, meta = app.page_body({}, 1, 25)
      assert.equal("", data)
      assert.equal('],"meta":{"current_page":1,"total_pages":0,"total_count":0,"per_page":25}}', meta)
      -- an absurd page number: no calls, no overflow
      data = app.page_body({ 1 }, math.maxinteger, 100)
      assert.equal("", data)
    end)
  end)

  describe("the control API", function()
    local app
    before_each(function() app = new { calls = 30 } end)

    local function control(method, path, body)
      local status, text, extra = app.control { method = method, path = path, body = body or "" }
      return status, cjson.decode(text), extra
    end

    it("arrive: calls at the top, newer than every other, each id new; reset drops them", function()
      local before = all_calls(app)
      local status, body = control("POST", "/_control/arrive", '{"calls": 3}')
      assert.equal(200, status)
      assert.same({ ok = true, arrived = 3 }, body)
      local after = all_calls(app)
      assert.equal(33, #after)
      assert.equal(before[1].call_id, after[4].call_id)
      assert.truthy(after[3].created_at > before[1].created_at)
      local _, page = api(app, "per_page=100")
      assert.equal(33, page.meta.total_count)
      assert.equal(after[1].call_id, page.data[1].call_id)
      assert.equal(3, cjson.decode(app.render_stats()).arrived)
      control("POST", "/_control/reset")
      assert.same(before, all_calls(app))
    end)

    it("config: checked whole before anything is set", function()
      local status, body = control("POST", "/_control/config", '{"burst_page": 2}')
      assert.equal(400, status)
      assert.equal("burst_page and burst_calls go together", body.error)
      status, body = control("POST", "/_control/config", '{"latency_ms": 5, "nope": 1}')
      assert.equal(400, status)
      assert.equal("unknown key nope", body.error)
      status = control("POST", "/_control/config", "[]")
      assert.equal(400, status)
      status = control("POST", "/_control/config", '{"arrivals_per_request": 2}')
      assert.equal(200, status)
    end)

    it("an unknown path is a 404, a wrong method a 405 with Allow", function()
      assert.equal(404, (control("GET", "/_control/nope")))
      local status, body, extra = control("GET", "/_control/reset")
      assert.equal(405, status)
      assert.same({ "method not allowed" }, body.errors)
      assert.same({ { "Allow", "POST" } }, extra)
    end)
  end)

  describe("the fault script's actions", function()
    it("are checked: kinds, keys, counts", function()
      local a = assert(server.check_action { page = 2, status = 503, times = 2 })
      assert.equal("status", a.kind)
      assert.equal(2, a.page)
      assert.equal(2, a.left)
      assert.equal("pass", assert(server.check_action { fault = "pass", arrive = 7 }).kind)
      local function refused(raw, why)
        local ok, err = server.check_action(raw)
        assert.is_nil(ok)
        assert.equal(why, err)
      end
      refused({ fault = "rest" }, "unknown fault rest")
      refused({ status = 200, nope = 1 }, "unknown key nope")
      refused({ fault = "arrive" }, "fault arrive needs arrive (a number of calls)")
      refused({ fault = "pass", arrive = 1.5 }, "arrive must be an integer from 0 to " .. server.MAX_ARRIVE)
      refused({ status = 600 }, "status must be an integer from 200 to 599")
      refused({ fault = "pass", times = 0 }, "times must be an integer >= 1")
    end)
  end)
end)
