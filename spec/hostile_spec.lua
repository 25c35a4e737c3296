-- Hostile servers and lifetimes: the token stays home, everything is bounded,
-- bad bodies become errors, retries keep their budget, paging always ends,
-- and descriptors come back.
local H = require "spec.support.helper"
local osvi = require "osvi"
local socket = require "socket"

local server

local fails = H.fails

local function vm(field)
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^" .. field .. ":%s+(%d+) kB")
    if kb then return tonumber(kb) * 1024 end
  end
end

describe("hostile servers", function()
  setup(function() server = H.start { calls = 120 } end)
  teardown(function() server:stop() end)
  before_each(function() server:reset() end)

  describe("the token", function()
    it("never reaches another host through a redirect", function()
      local other = assert(socket.bind("127.0.0.2", 0))
      local _, port = other:getsockname()
      other:settimeout(0.3)
      for _, location in ipairs {
        "http://127.0.0.2:" .. port .. "/v1/calls",
        "https://127.0.0.2:" .. port .. "/v1/calls",
        "//127.0.0.2:" .. port .. "/v1/calls",
        "ftp://127.0.0.2:" .. port .. "/",
      } do
        for _, status in ipairs { 301, 302, 307, 308 } do
          server:script { { fault = "redirect", status = status, location = location } }
          local err = fails(server:client())
          assert.equal("http", err.kind)
          assert.equal(status, err.status)
        end
      end
      assert.is_nil(other:accept()) -- nothing ever connected
      other:close()
      assert.equal(16, server:stats().requests)
    end)

    it("appears in no error message, whatever the failure", function()
      local token = H.TOKEN
      local c = server:client { max_retries = 0, max_response_bytes = 4096 }
      server:script { { status = 401 }, { status = 500 }, { fault = "reset" },
        { status = 200, body = "<html>" }, { fault = "huge", bytes = 100000 },
        { fault = "redirect", location = "http://127.0.0.2:9/?token=x" },
        { status = 200, body = '{"success":false}' }, { status = 304 },
        { status = 200, headers = { ["Content-Encoding"] = "x-unknown" } } }
      for _ = 1, 9 do
        local err = fails(c)
        for k, v in pairs(err) do
          assert.falsy(tostring(v):find(token, 1, true), k)
        end
        assert.falsy(tostring(err):find(token, 1, true))
      end
      assert.falsy(tostring(c):find(token, 1, true))
      local bad = osvi.new { token = "xxxxxxxxxxxxxxxx", base_url = "http://127.0.0.1:" .. H.closed_port(),
                             max_retries = 0 }
      assert.falsy(tostring(fails(bad)):find("xxxxxxxx", 1, true))
      -- nor in a usage error, whichever option is wrong (spec/security_spec.lua
      -- holds the rest: credentials in URLs, proxies, the log)
      for _, opts in ipairs { { base_url = token }, { user_agent = "ua\r\nAPI-Token: " .. token },
        { proxy = "http://" .. token .. "@" }, { timout = 1 } } do
        opts.token = token
        local err = H.raises(osvi.new, opts)
        assert.equal("usage", err.kind)
        assert.falsy(tostring(err):find(token, 1, true), tostring(err))
      end
    end)

    it("is refused with a base_url of another scheme", function()
      for _, url in ipairs { "file:///etc/passwd", "ftp://127.0.0.1/", "gopher://127.0.0.1/", "127.0.0.1:80" } do
        local err = H.raises(osvi.new, { token = H.TOKEN, base_url = url })
        assert.equal("base_url", err.key)
      end
    end)
  end)

  describe("bounds", function()
    it("an endless chunked body ends in too_large with flat memory", function()
      server:script { { fault = "huge", bytes = -1, chunked = true } }
      local before = vm("VmRSS")
      local err = fails(server:client { max_response_bytes = 1024 * 1024 })
      assert.equal("too_large", err.kind)
      assert.equal(200, err.status)
      assert.equal(1, err.attempts)
      assert.truthy(vm("VmRSS") - before < 32 * 1024 * 1024)
    end)

    it("a Content-Length over the cap fails before the body is read", function()
      server:script { { fault = "huge", bytes = 50 * 1024 * 1024 } }
      local t0 = socket.gettime()
      local err = fails(server:client { max_response_bytes = 1024 * 1024 })
      assert.equal("too_large", err.kind)
      assert.truthy(socket.gettime() - t0 < 2)
    end)

    it("a gzip bomb ends in too_large, the cap counting decompressed bytes", function()
      local p = io.popen("head -c 67108864 /dev/zero | gzip -c")
      local bomb = p:read("*a")
      p:close()
      assert.truthy(#bomb < 200 * 1024)
      server:script { { status = 200, body = bomb, headers = { ["Content-Encoding"] = "gzip" } } }
      local err = fails(server:client { max_response_bytes = 1024 * 1024 })
      assert.equal("too_large", err.kind)
    end)

    it("a gzip body within the cap is decoded", function()
      local name = os.tmpname()
      local f = assert(io.open(name, "w"))
      f:write('{"success":true,"data":[{"call_id":"z"}],'
        .. '"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":25}}')
      f:close()
      local p = io.popen("gzip -c " .. name)
      local gz = p:read("*a")
      p:close()
      os.remove(name)
      server:script { { status = 200, body = gz, headers = { ["Content-Encoding"] = "gzip" } } }
      local page = assert(server:client():page {})
      assert.equal("z", page.data[1].call_id)
      assert.matches("gzip", server:stats().log[1].headers["accept-encoding"])
    end)

    it("a server that drips a byte a second is a timeout long before the timeout", function()
      server:script { { fault = "drip", interval_ms = 1000 } }
      local t0 = socket.gettime()
      local err = fails(server:client { timeout = 20, stall_timeout = 1, max_retries = 0 })
      local took = socket.gettime() - t0
      assert.equal("timeout", err.kind)
      assert.truthy(took < 4, "took " .. took)
    end)

    it("timeout bounds a drip too", function()
      server:script { { fault = "drip", interval_ms = 100 } }
      local t0 = socket.gettime()
      local err = fails(server:client { timeout = 1, max_retries = 0 })
      assert.equal("timeout", err.kind)
      assert.truthy(socket.gettime() - t0 < 3)
    end)
  end)

  describe("bodies", function()
    local meta = '"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":25}'
    local function page_with(call) return '{"success":true,"data":[' .. call .. '],' .. meta .. '}' end

    it("refuses NaN, Infinity, hex, overflowing and inexact numbers", function()
      for _, n in ipairs { "NaN", "Infinity", "-Infinity", "0x1F", "1e400", "-1e400",
        "9007199254740993", "-9007199254740993", "18446744073709551616" } do
        server:script { { status = 200, body = page_with('{"duration_seconds":' .. n .. '}') } }
        local err = fails(server:client())
        assert.equal("decode", err.kind, n)
      end
      -- 2^53 - 1 is still exact
      server:script { { status = 200, body = page_with('{"campaign_id":9007199254740991}') } }
      local page = assert(server:client():page {})
      assert.equal(9007199254740991, page.data[1].campaign_id)
      assert.equal("integer", H.math_type(page.data[1].campaign_id))
    end)

    it("refuses the wrong shapes", function()
      for _, body in ipairs {
        "", " ", "[]", "[1,2]", "42", '"s"', "true", "null", "\0{", "{\0", -- UTF-16 (found by fuzzing)
        '{"success":true,"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":25}}',
        '{"success":true,"data":[]}',
        '{"success":true,"data":"x",' .. meta .. '}',
        '{"success":true,"data":[[1]],' .. meta .. '}',
        '{"success":true,"data":[{"a":1},[2]],' .. meta .. '}',
        '{"success":true,"data":["x"],' .. meta .. '}',
        '{"success":true,"data":[],"meta":[1,2,3,4]}',
        '{"success":true,"data":[],"meta":{"current_page":-1,"total_pages":1,"total_count":1,"per_page":25}}',
        '{"data":[],' .. meta .. '}',
        '{"success":true,"data":[{}],' .. meta, -- truncated
      } do
        server:script { { status = 200, body = body } }
        local err = fails(server:client())
        assert.equal("decode", err.kind, body)
        assert.equal(200, err.status)
      end
    end)

    it("refuses nesting deeper than 64 levels inside a call, and cjson's 1000 overall", function()
      local deep = string.rep("[", 100) .. string.rep("]", 100)
      server:script { { status = 200, body = page_with('{"x":' .. deep .. '}') } }
      assert.equal("decode", fails(server:client()).kind)
      local deeper = string.rep("[", 5000) .. string.rep("]", 5000)
      server:script { { status = 200, body = deeper } }
      assert.equal("decode", fails(server:client()).kind)
    end)

    it("names the path to a bad value, however deep", function()
      local meta2 = ',"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":25}}'
      local function message(data)
        local page, err = osvi.decode(200, '{"success":true,"data":' .. data .. meta2)
        assert.is_nil(page)
        return err.message
      end
      assert.matches("data[1].campaign_id: an integer beyond 2^53",
        message('[{"campaign_id":9007199254740993}]'), 1, true)
      assert.matches("data[1].a.b[3].c: a number out of range",
        message('[{"a":{"b":[1,2,{"c":1e999}]}}]'), 1, true)
      assert.matches("data[2]: not an object", message('[{"a":1},[2]]'), 1, true)
      for _, depth in ipairs { 64, 65, 100, 900 } do
        local msg = message('[{"x":' .. string.rep("[", depth) .. string.rep("]", depth) .. '}]')
        assert.matches("^data%[1%]%.x%[1%]", msg)
        assert.matches("nested too deeply", msg, 1, true)
      end
    end)

    it("keeps the last of duplicate keys, and strings byte for byte", function()
      server:script { { status = 200, body = page_with(
        '{"call_id":"first","call_id":"last","agent_name":"a\\u0000b","phone_number":"\255\254"}') } }
      local call = assert(server:client():page {}).data[1]
      assert.equal("last", call.call_id)
      assert.equal("a\0b", call.agent_name)
      assert.equal("\255\254", call.phone_number)
    end)

    it("refuses a page with more calls than its per_page", function()
      server:script { { status = 200, body = '{"success":true,"data":[{},{},{}],'
        .. '"meta":{"current_page":1,"total_pages":1,"total_count":3,"per_page":2}}' } }
      local err = fails(server:client())
      assert.equal("decode", err.kind)
      assert.matches("more than meta.per_page", err.message, 1, true)
    end)
  end)

  describe("Retry-After", function()
    local function timed(headers, opts)
      server:script { { status = 429, headers = headers } }
      local t0 = socket.gettime()
      local page, err = server:client(opts):page {}
      return socket.gettime() - t0, page, err
    end

    it("a date in the past retries at once", function()
      local took, page = timed { ["Retry-After"] = "Wed, 21 Oct 2015 07:28:00 GMT" }
      assert.truthy(page)
      assert.truthy(took < 0.5, took)
    end)

    it("garbage falls back to the backoff", function()
      local took, page = timed({ ["Retry-After"] = "soon, maybe" }, { retry_base = 0.4 })
      assert.truthy(page)
      assert.truthy(took >= 0.2 and took < 2, took) -- 0.2 to 0.4 s
    end)

    it("a huge value is returned at once, with retry_after", function()
      local took, page, err = timed { ["Retry-After"] = "99999999" }
      assert.is_nil(page)
      assert.equal(99999999, err.retry_after)
      assert.truthy(took < 0.5)
    end)
  end)

  describe("the retry budget", function()
    -- page 1 leaves a kept-alive connection; the server then resets the next
    -- request on it, and libcurl would re-send on a new connection by itself
    for _, retries in ipairs { 0, 1, 2 } do
      it("is 1 + max_retries requests at the server, counting libcurl's re-send (max_retries = "
        .. retries .. ")", function()
        local c = server:client { max_retries = retries }
        assert(c:page { per_page = 1 })
        server:reset()
        server:script { { fault = "reset", times = 10 } }
        local err = fails(c)
        assert.equal("network", err.kind)
        assert.equal(1 + retries, server:stats().requests)
      end)
    end

    it("still lets libcurl's re-send succeed when the budget allows", function()
      local c = server:client { max_retries = 1 }
      assert(c:page { per_page = 1 })
      server:reset()
      server:script { { fault = "reset" } }
      assert.truthy(c:page { per_page = 1 })
      assert.equal(2, server:stats().requests)
    end)
  end)

  describe("paging anomalies", function()
    local function ids_of(filters, opts)
      local out = {}
      local ok, err = pcall(function()
        for call in server:client(opts):calls(filters) do out[#out + 1] = call.call_id end
      end)
      return out, ok, err
    end

    -- a page of per_page 3 whose meta agrees with itself: `total` calls
    local function page3(ids, page, total)
      local calls = {}
      for i, id in ipairs(ids) do calls[i] = { call_id = id } end
      return H.page_body(calls, { current_page = page, total_pages = math.ceil(total / 3),
                                  total_count = total, per_page = 3 })
    end

    it("the same page twice yields no call twice", function()
      -- page 2 answered with page 1's calls: to the ranks, the listing
      -- shifted (calls left it); nothing is handed out twice
      server:script {
        { status = 200, body = page3({ "a", "b", "c" }, 1, 6) },
        { status = 200, body = page3({ "a", "b", "c" }, 2, 6) },
      }
      local ids, ok = ids_of { per_page = 3 }
      assert.is_true(ok)
      assert.same({ "a", "b", "c" }, ids)
      assert.equal(2, server:stats().requests)
    end)

    it("a listing that grows faster than pages are read ends in an 'inconsistent' error", function()
      -- 60 calls arrive before each answer, more than a page of 50: no page
      -- ever reaches the calls below the first one
      for _, prefetch in ipairs { 0, 4 } do
        server:reset()
        server:config { arrivals_per_request = 60 }
        local ids, ok, err = ids_of({ per_page = 50 }, { prefetch = prefetch })
        assert.is_false(ok)
        assert.equal("inconsistent", err.kind)
        assert.equal(50, #ids)
        assert.truthy(server:stats().requests <= 2 + 8 + prefetch, server:stats().requests)
      end
      server:reset()
    end)

    it("a server answering another page than asked is a decode error", function()
      server:script { { status = 200, body = page3({ "a", "b", "c" }, 1, 6) },
                      { status = 200, body = page3({ "a", "b", "c" }, 1, 6) } }
      local ids, ok, err = ids_of { per_page = 3 }
      assert.is_false(ok)
      assert.same({ "a", "b", "c" }, ids)
      assert.equal("decode", err.kind)
      assert.matches("asked for page 2, the server answered page 1", err.message, 1, true)
    end)

    it("a page beyond the end ends the iteration", function()
      local ids, ok = ids_of { page = 50, per_page = 100 }
      assert.is_true(ok)
      assert.same({}, ids)
      assert.equal(1, server:stats().requests)
    end)
  end)

  describe("lifetime", function()
    -- each check runs in a process of its own, so that no other spec's
    -- objects come and go while descriptors are counted
    local prelude = [[
      local osvi = require "osvi"
      local url, token = ...
      -- the sockets open now, as "number -> socket:[inode]" lines: all
      -- that libcurl opens are sockets (connections and its wakeup pair)
      local function fds()
        local p = io.popen("cd /proc/" .. PID .. "/fd && for f in *; do "
          .. "echo \"$f -> $(readlink $f)\"; done")
        local t = {}
        for line in p:lines() do
          if line:find("socket:", 1, true) then t[#t + 1] = line end
        end
        p:close()
        return t
      end
      -- the descriptors of `now` that were not open at `base`
      local function new_fds(base, now)
        local had, out = {}, {}
        for _, l in ipairs(base) do had[l] = true end
        for _, l in ipairs(now) do if not had[l] then out[#out + 1] = l end end
        return #out .. (#out > 0 and " " .. table.concat(out, ", ") or "")
      end
      local function client() return osvi.new { token = token, base_url = url } end
      local function settle() collectgarbage() collectgarbage() end
    ]]
    local function run(body)
      local code = "local PID do local f = io.open('/proc/self/stat') PID = f:read('*n') f:close() end\n"
        .. prelude .. body
      code = code:gsub("%.%.%.", "'" .. server.url .. "', '" .. H.TOKEN .. "'", 1)
      local ok, out = H.run_lua(code)
      assert.is_true(ok, out)
      return out
    end

    it("returns descriptors to their baseline after break, errors, coroutines and dropped clients", function()
      local out = run [[
        settle()
        local base = fds()
        local open
        local function work()
          local c = client()
          for _ in c:calls { per_page = 5 } do break end
          pcall(function() for _ in c:calls { per_page = 5 } do error("x") end end)
          local co = coroutine.wrap(function()
            for call in c:calls { per_page = 5 } do coroutine.yield(call) end
          end)
          co()
          open = fds()
        end
        work()
        settle()
        print(new_fds(base, open))
        print(new_fds(base, fds()))
      ]]
      local open, after = out:match("^(%d+).*\n(.*)\n$")
      assert.truthy(open, out)
      -- open: the kept-alive connection and libcurl's internal wakeup pair
      assert.truthy(tonumber(open) > 0, out)
      assert.equal("0", after)
    end)

    it("creates and drops 10,000 clients, 200 of them connected, without leaking", function()
      local out = run [[
        settle()
        local base = fds()
        local function work()
          for i = 1, 10000 do
            local c = client()
            if i % 50 == 0 then assert(c:page { per_page = 1 }) end
            if i % 1000 == 0 then collectgarbage() end
          end
        end
        work()
        settle()
        print(new_fds(base, fds()))
      ]]
      assert.equal("0\n", out)
    end)
  end)
end)
