-- Nothing leaks, nothing is injected, every message is exact: the token and
-- any credentials in every printed form (tostring, errors, the log), the
-- proxy policy, header injection through every string option, the limits
-- checked before any request, the real cause of each failure, and usage
-- messages that point at the caller's line.
--
-- Everything stays on 127.0.0.1: the API is the local server, and the
-- proxies and odd servers are "peers", tiny LuaSocket listeners in a child
-- process that record what they receive and send one canned answer.
local H = require "spec.support.helper"
local osvi = require "osvi"

local server
local T = H.TOKEN

local function new_usage(opts)
  local err = H.raises(osvi.new, opts)
  assert.equal("usage", err.kind)
  return err
end

local function line_here() return debug.getinfo(2, "l").currentline end

-- The peer: prints "port pid", then answers every connection with the same
-- bytes after reading the request head, writing each head line to the log
-- (one "@@connection" line before each). Runs until killed (30 s at most).
local PEER = [[
local socket = require "socket"
local answer_file, log_file = arg[1], arg[2]
local f = assert(io.open(answer_file, "rb"))
local answer = f:read("*a")
f:close()
local srv = assert(socket.bind("127.0.0.1", 0))
local _, port = srv:getsockname()
local st = assert(io.open("/proc/self/stat"))
local pid = st:read("*n")
st:close()
io.stdout:write(port, " ", pid, "\n")
io.stdout:flush()
local log = assert(io.open(log_file, "wb"))
local deadline = socket.gettime() + 30
srv:settimeout(0.2)
while socket.gettime() < deadline do
  local c = srv:accept()
  if c then
    log:write("@@connection\n")
    log:flush()
    c:settimeout(5)
    while true do
      local line = c:receive("*l")
      if not line then break end
      log:write(line, "\n")
      log:flush()
      if line == "" then break end
    end
    c:send(answer)
    c:close()
  end
end
log:close()
]]

local peer_file
local function peer(answer)
  if not peer_file then
    peer_file = os.tmpname()
    local f = assert(io.open(peer_file, "w"))
    f:write(PEER)
    f:close()
  end
  local answer_file, log_file = os.tmpname(), os.tmpname()
  local f = assert(io.open(answer_file, "wb"))
  f:write(answer)
  f:close()
  local proc = assert(io.popen("exec " .. H.SERVER_LUA .. " " .. peer_file .. " " .. answer_file .. " " .. log_file))
  local port, pid = proc:read("*l"):match("^(%d+) (%d+)$")
  local p = { port = tonumber(port), url = "http://127.0.0.1:" .. port }
  -- what it received so far
  function p.log()
    local lf = assert(io.open(log_file, "rb"))
    local text = lf:read("*a")
    lf:close()
    return text
  end
  function p.connections()
    local n = 0
    for _ in p.log():gmatch("@@connection") do n = n + 1 end
    return n
  end
  function p.stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    proc:close()
    os.remove(answer_file)
    os.remove(log_file)
  end
  return p
end

local PAGE = '{"success":true,"data":[{"call_id":"via-peer"}],'
  .. '"meta":{"current_page":1,"total_pages":1,"total_count":1,"per_page":25}}'

local function response(head_lines, body)
  body = body or PAGE
  return "HTTP/1.1 200 OK\r\n" .. table.concat(head_lines, "\r\n") .. (#head_lines > 0 and "\r\n" or "")
    .. "Connection: close\r\n\r\n" .. body
end

-- Runs Lua code in a child with at most `n` file descriptors.
-- The script may call use_up_fds(): opens /dev/null until the limit is reached, returns the files.
local USE_UP_FDS = [[
local function use_up_fds()
  local files = {}
  while true do
    local f = io.open("/dev/null")
    if not f then return files end
    files[#files + 1] = f
  end
end
]]
local function run_with_fds(n, code)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write(string.format("package.cpath = %q .. package.cpath\n",
    (os.getenv("OSVI_CPATH") or "./?.so") .. ";"), USE_UP_FDS, code)
  f:close()
  local p = io.popen("ulimit -n " .. n .. " && exec env -u OSVI_API_TOKEN -u OSVI_BASE_URL "
    .. H.LUA .. " " .. tmp .. " 2>&1")
  local out = p:read("*a")
  p:close()
  os.remove(tmp)
  return out
end

describe("security", function()
  setup(function() server = H.start { calls = 30 } end)
  teardown(function() server:stop() end)
  before_each(function() server:reset() end)

  describe("base_url", function()
    it("needs a host: an empty one is a usage error, never a request to a host named by the path", function()
      for _, url in ipairs { "http://", "http:///", "http:////", "http://:80", "http://@/", "https://",
        "https:///v1", "http://alice:pw@", "http://alice:pw@:80/", "http://[]:80" } do
        local err = new_usage { token = T, base_url = url }
        assert.equal("base_url", err.key)
        assert.matches("expected a host after 'https?://'", err.message)
      end
    end)

    it("needs a host from OSVI_BASE_URL too (OSVI_BASE_URL=\"http://$HOST\" with HOST unset)", function()
      local ok, out = H.run_lua([[
        local ok, err = pcall(require("osvi").page, {})
        print(err.kind, err.key, err.message)
      ]], { OSVI_API_TOKEN = T, OSVI_BASE_URL = "http://" })
      assert.is_true(ok, out)
      assert.matches("^usage\tbase_url\toption 'base_url' ?.*expected a host", out)
    end)

    it("checks the port", function()
      for _, url in ipairs { "http://h:", "http://h:0", "http://h:65536", "http://h:8o", "http://[::1]x" } do
        assert.matches("expected a port", new_usage({ token = T, base_url = url }).message, 1, true)
      end
      for _, url in ipairs { "http://h:1", "http://h:65535/", "http://[::1]:8080", "http://alice:pw@h:80",
        "https://127.0.0.1/prefix", "https://gw.example/osvi-api/" } do
        assert.truthy(osvi.new { token = T, base_url = url }, url)
      end
    end)

    it("is the API's root: /v1 or /v1/calls at its end is a usage error that says so", function()
      for _, url in ipairs { "https://api.osvi.ai/v1", "https://api.osvi.ai/v1/", "http://127.0.0.1:9/v1/calls",
        "http://127.0.0.1:9/v1/calls/", "http://127.0.0.1:9/gw/v1" } do
        local err = new_usage { token = T, base_url = url }
        assert.equal("base_url", err.key)
        assert.matches("expected the API's root", err.message, 1, true)
        assert.matches("osvi adds itself", err.message, 1, true)
      end
    end)

    it("is limited to 4096 bytes", function()
      local err = new_usage { token = T, base_url = "http://h/" .. string.rep("a", 4096) }
      assert.equal("base_url", err.key)
      assert.matches("at most 4096 bytes", err.message, 1, true)
    end)
  end)

  describe("header injection", function()
    local valid = {
      token = T, base_url = "http://127.0.0.1:9", user_agent = "report/1.0",
      ca_file = "/etc/ssl/certs/ca-certificates.crt", proxy = "http://127.0.0.1:9",
    }
    local bad = { "\r\nX-Injected: yes", "\nX-Injected: yes", "\rX-Injected", "\0X-Injected", "\tX",
      "\127X", "\27[31mX", "\1X" }

    it("is refused in every string option: a control character is a usage error naming the key", function()
      for key, good in pairs(valid) do
        for _, tail in ipairs(bad) do
          local opts = {}
          for k, v in pairs(valid) do opts[k] = v end
          -- the token keeps its 16 characters
          opts[key] = key == "token" and good:sub(1, 16 - 1) .. tail:sub(1, 1) or good .. tail
          local err = new_usage(opts)
          assert.equal(key, err.key)
          assert.matches("expected no control characters", err.message, 1, true)
          assert.falsy(tostring(err):find("Injected", 1, true), key)
          assert.falsy(tostring(err):find(T:sub(1, 15), 1, true), key)
        end
      end
    end)

    it("is refused in OSVI_API_TOKEN and OSVI_BASE_URL, naming the variable", function()
      local ok, out = H.run_lua([[
        local osvi = require "osvi"
        local ok, err = pcall(osvi.new, {})
        print(err.key, err.message)
      ]], { OSVI_API_TOKEN = "osvi-test-tok\r\n1", OSVI_BASE_URL = "http://127.0.0.1:9" })
      assert.is_true(ok, out)
      assert.matches("^token\toption 'token' %(from OSVI_API_TOKEN%): expected no control characters", out)
      ok, out = H.run_lua([[
        local osvi = require "osvi"
        local ok, err = pcall(osvi.new, {})
        print(err.key, err.message)
      ]], { OSVI_API_TOKEN = T, OSVI_BASE_URL = "http://127.0.0.1:9\r\nX-Injected: yes" })
      assert.is_true(ok, out)
      assert.matches("^base_url\toption 'base_url' %(from OSVI_BASE_URL%): expected no control characters", out)
      assert.falsy(out:find("Injected", 1, true))
    end)

    it("leaves exactly one API-Token and one User-Agent at the server", function()
      local c = server:client { user_agent = "report/1.0 (API-Token: x)" }
      assert(c:page {})
      local req = server:stats().log[1]
      assert.equal(T, req.headers["api-token"])
      assert.equal("report/1.0 (API-Token: x)", req.headers["user-agent"])
      assert.is_nil(req.headers["x-injected"])
    end)

    it("bounds user_agent", function()
      assert.equal("user_agent", new_usage({ token = T, user_agent = string.rep("u", 1025) }).key)
      assert.truthy(osvi.new { token = T, user_agent = string.rep("u", 1024) })
    end)
  end)

  describe("credentials in a URL", function()
    local base_pw, proxy_pw = "s3cr3t-pw", "pr0xy-pw"

    it("are masked in tostring(client)", function()
      local c = osvi.new { token = T, base_url = "http://alice:" .. base_pw .. "@127.0.0.1:9" }
      assert.matches("^osvi%.Client %(.*, http://alice:%*%*%*@127%.0%.0%.1:9%)$", tostring(c))
      c = osvi.new { token = T, base_url = "http://" .. base_pw .. "@127.0.0.1:9/" }
      assert.matches("^osvi%.Client %(.*, http://%*%*%*@127%.0%.0%.1:9%)$", tostring(c))
    end)

    it("are masked in the usage errors about base_url and proxy", function()
      for _, opts in ipairs {
        { base_url = "http://alice:" .. base_pw .. "@127.0.0.1:9/v1" },
        { base_url = "ftp://alice:" .. base_pw .. "@127.0.0.1/" },
        { base_url = "http://alice:" .. base_pw .. "@127.0.0.1/?x=1" },
        { base_url = "http://alice:" .. base_pw .. "@" },
        { base_url = "http://alice:" .. base_pw .. "@h:99999" },
        { proxy = "gopher://bob:" .. proxy_pw .. "@127.0.0.1:9" },
        { proxy = "http://bob:" .. proxy_pw .. "@" },
        { proxy = "bob:" .. proxy_pw .. "@:3128" },
        { proxy = "http://bob:" .. proxy_pw .. "@h:0" },
      } do
        opts.token = T
        local err = new_usage(opts)
        for k, v in pairs(err) do
          assert.falsy(tostring(v):find(base_pw, 1, true), k)
          assert.falsy(tostring(v):find(proxy_pw, 1, true), k)
        end
        local shown = tostring(err):match("got (.*)$")
        assert.truthy(shown:find(":***@", 1, true) or shown == "'ftp://...'" or shown:find("not shown", 1, true),
          tostring(err))
      end
    end)

    it("a value that is not a URL at all is not shown: it may be the token, given in the wrong place", function()
      for _, opts in ipairs { { base_url = T }, { base_url = "Bearer " .. T }, { proxy = T .. ":" } } do
        opts.token = T
        local err = new_usage(opts)
        assert.falsy(tostring(err):find(T, 1, true), tostring(err))
        assert.matches("bytes with no scheme (not shown)", err.message, 1, true)
      end
      local ok, out = H.run_lua([[
        local ok, err = pcall(require("osvi").new)
        print(tostring(err))
      ]], { OSVI_API_TOKEN = T, OSVI_BASE_URL = T }) -- the two variables swapped
      assert.is_true(ok, out)
      assert.falsy(out:find(T, 1, true), out)
    end)

    it("are masked in transfer errors and in the debug log, with the token nowhere", function()
      local closed = H.closed_port()
      local code = string.format([[
        local osvi = require "osvi"
        -- a proxy that refuses the connection: libcurl's message may quote it
        for _, proxy in ipairs { "http://bob:%s@127.0.0.1:%d", "socks5h://bob:%s@127.0.0.1:%d",
                                 "https://bob:%s@127.0.0.1:%d" } do
          local c = osvi.new { token = %q, base_url = "http://alice:%s@127.0.0.1:%d",
                               proxy = proxy, max_retries = 0, log = true }
          local page, err = c:page {}
          print(tostring(c))
          for k, v in pairs(err) do print(k, v) end
          print(tostring(err))
        end
        -- straight to the server, with userinfo in base_url
        local c = osvi.new { token = %q, base_url = "http://alice:%s@127.0.0.1:%d", log = true }
        print(tostring(c), assert(c:page {}).meta.total_count)
      ]], proxy_pw, closed, proxy_pw, closed, proxy_pw, closed, T, base_pw, server.port,
        T, base_pw, server.port)
      local ok, out = H.run_lua(code, { OSVI_LOG = "1" })
      assert.is_true(ok, out)
      assert.falsy(out:find(base_pw, 1, true), out)
      assert.falsy(out:find(proxy_pw, 1, true), out)
      assert.falsy(out:find(T, 1, true), out)
      assert.matches("osvi: proxy: http://bob:***@127.0.0.1:" .. closed .. " (the proxy option)", out, 1, true)
      assert.matches("http://alice:***@127.0.0.1:" .. server.port .. ")\t30", out, 1, true)
      assert.matches("osvi: GET /v1/calls -> 200", out, 1, true)
    end)
  end)

  describe("proxies", function()
    -- a child that lists one page with the given base_url and options, its
    -- environment holding the given proxy variables; returns its output
    local function listing(base_url, env, extra)
      local e = { OSVI_LOG = "1" }
      for k, v in pairs(env) do e[k] = v end
      local ok, out = H.run_lua(string.format([[
        local osvi = require "osvi"
        local opts = { token = %q, base_url = %q, max_retries = 0, timeout = 3 }
        for k, v in pairs(%s) do opts[k] = v end
        local c = osvi.new(opts)
        local page, err = c:page {}
        print(page and "page " .. page.data[1].call_id or "error " .. tostring(err))
      ]], T, base_url, extra or "{}"), e)
      assert.is_true(ok, out)
      return out
    end

    it("named only by the environment are not used for an http:// base_url: no token in clear", function()
      local proxy = peer(response({ "Content-Length: " .. #PAGE }))
      for _, name in ipairs { "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY" } do
        server:reset()
        local out = listing(server.url, { [name] = "http://bob:pr0xy-pw@127.0.0.1:" .. proxy.port })
        assert.matches("\npage ", "\n" .. out, 1, true) -- from the API itself
        assert.equal(1, server:stats().requests)
        assert.matches("osvi: proxy: none; " .. name .. "=http://bob:***@127.0.0.1:" .. proxy.port
          .. " in the environment is ignored: base_url is http://", out, 1, true)
        assert.falsy(out:find("pr0xy-pw", 1, true))
      end
      assert.equal(0, proxy.connections())
      proxy.stop()
    end)

    it("named by the proxy option are used, for http:// too (the caller's choice), credentials masked", function()
      local proxy = peer(response({ "Content-Length: " .. #PAGE }))
      local out = listing(server.url, {}, string.format("{ proxy = %q }",
        "http://bob:pr0xy-pw@127.0.0.1:" .. proxy.port))
      assert.matches("page via-peer", out, 1, true)
      assert.matches("osvi: proxy: http://bob:***@127.0.0.1:" .. proxy.port .. " (the proxy option)", out, 1, true)
      local log = proxy.log()
      assert.matches("GET " .. server.url .. "/v1/calls HTTP/1.1", log, 1, true)
      assert.matches("Proxy-Authorization: Basic", log, 1, true)
      assert.equal(0, server:stats().requests)
      assert.falsy(out:find("pr0xy-pw", 1, true))
      proxy.stop()
    end)

    it("\"\" turns the environment's off, for https:// too", function()
      local proxy = peer("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      local out = listing("https://127.0.0.1:" .. H.closed_port(),
        { https_proxy = proxy.url }, "{ proxy = '' }")
      assert.matches("osvi: proxy: none (the proxy option is \"\"; https_proxy in the environment is not used)",
        out, 1, true)
      assert.matches("error osvi: network", out, 1, true)
      assert.equal(0, proxy.connections())
      proxy.stop()
    end)

    it("from the environment carry https:// inside a CONNECT tunnel: the proxy never sees the token", function()
      local proxy = peer("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      local port = H.closed_port()
      for _, name in ipairs { "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY" } do
        local out = listing("https://127.0.0.1:" .. port, { [name] = "http://bob:pr0xy-pw@127.0.0.1:" .. proxy.port })
        assert.matches("osvi: proxy: http://bob:***@127.0.0.1:" .. proxy.port .. " from " .. name
          .. " in the environment (a CONNECT tunnel: the API token stays inside TLS)", out, 1, true)
        assert.matches("error osvi: network", out, 1, true)
        assert.falsy(out:find("pr0xy-pw", 1, true))
      end
      local log = proxy.log()
      assert.equal(4, proxy.connections())
      assert.matches("CONNECT 127.0.0.1:" .. port .. " HTTP/1.1", log, 1, true)
      assert.falsy(log:find(T, 1, true))
      assert.falsy(log:lower():find("api-token", 1, true))
      proxy.stop()
    end)

    it("from the environment leave alone a host that NO_PROXY names", function()
      local proxy = peer("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
      local out = listing("https://127.0.0.1:" .. H.closed_port(),
        { https_proxy = proxy.url, NO_PROXY = "127.0.0.1" })
      assert.matches("NO_PROXY may exempt the host", out, 1, true)
      assert.matches("error osvi: network", out, 1, true)
      assert.equal(0, proxy.connections())
      proxy.stop()
    end)

    it("must be URLs with a host, of a scheme libcurl proxies with", function()
      for _, p in ipairs { "ftp://127.0.0.1:21", "http://", "http://:3128", "http://h:0", "h:99999",
        "http://h x:1" } do
        assert.equal("proxy", new_usage({ token = T, proxy = p }).key, p)
      end
      for _, p in ipairs { "", "127.0.0.1:3128", "http://h:3128", "HTTPS://h", "socks5h://u:p@h:1080",
        "socks4a://h", "http://[::1]:3128/" } do
        assert.truthy(osvi.new { token = T, proxy = p }, p)
      end
    end)
  end)

  describe("the length of a request", function()
    it("is checked with the filters: over 64 KiB, a usage error naming the key, before any request", function()
      local many = {}
      for i = 1, 200000 do many[i] = "picked" end
      local long = string.rep("picked,", 200000) .. "busy"
      local c = server:client()
      for _, status in ipairs { many, long } do
        for _, call in ipairs {
          function() return osvi.query { status = status } end,
          function() return c:page { status = status } end,
          function() return c:count { status = status } end,
          function() return c:calls { status = status } end,
          function() return osvi.core { status = status } end,
        } do
          local err = H.raises(call)
          assert.equal("usage", err.kind)
          assert.equal("status", err.key)
          assert.matches("longer than a request may be (65536 bytes)", err.message, 1, true)
        end
      end
      assert.equal(0, server:stats().requests)
      -- just under the limit is fine, and goes out
      local fits = {}
      for i = 1, math.floor((65536 - 100) / 7) do fits[i] = "picked" end
      assert.truthy(#osvi.query { status = fits, page = 1, per_page = 100 } <= 65536)
      c:page { status = fits, per_page = 1 }
      assert.equal(1, server:stats().requests)
    end)
  end)

  describe("the real cause", function()
    local function fails(c) return H.fails(c) end

    it("a 304 is an unexpected status, not a redirect", function()
      server:script { { status = 304 } }
      local err = fails(server:client())
      assert.equal("http", err.kind)
      assert.equal(304, err.status)
      assert.matches("unexpected HTTP status: 304 Not Modified", err.message, 1, true)
      assert.falsy(err.message:find("redirect", 1, true))
      assert.equal(1, server:stats().requests)
    end)

    it("an unknown Content-Encoding is decode: the answer came, in a form the client cannot read", function()
      server:script { { status = 200, headers = { ["Content-Encoding"] = "x-unknown" }, times = 3 } }
      local err = fails(server:client { max_retries = 2 })
      assert.equal("decode", err.kind)
      assert.equal(200, err.status)
      assert.equal(61, err.curl_code) -- CURLE_BAD_CONTENT_ENCODING
      assert.matches("Content-Encoding", err.message, 1, true)
      assert.equal(1, err.attempts)
      assert.equal(1, server:stats().requests)
      -- so is a broken gzip body
      server:reset()
      server:script { { status = 200, body = "not gzip at all", headers = { ["Content-Encoding"] = "gzip" } } }
      err = fails(server:client())
      assert.equal("decode", err.kind)
    end)

    it("a 1 MB response header line is 'a response header is too large', not out of memory, not retried", function()
      local p = peer(response({ "X-Big: " .. string.rep("a", 1024 * 1024), "Content-Length: " .. #PAGE }))
      local c = osvi.new { token = T, base_url = p.url, max_retries = 2, retry_base = 0 }
      local err = fails(c)
      assert.equal("network", err.kind)
      assert.matches("a response header is too large", err.message, 1, true)
      assert.falsy(err.message:lower():find("memory", 1, true))
      assert.equal(1, err.attempts)
      assert.equal(1, p.connections())
      p.stop()
    end)

    it("headers over 256 KiB in all are too large too", function()
      local lines = {}
      for i = 1, 30 do lines[i] = "X-H" .. i .. ": " .. string.rep("b", 10000) end
      lines[#lines + 1] = "Content-Length: " .. #PAGE
      local p = peer(response(lines))
      local err = fails(osvi.new { token = T, base_url = p.url, max_retries = 2, retry_base = 0 })
      assert.equal("network", err.kind)
      assert.matches("the response headers are too large (over 256 KiB in all)", err.message, 1, true)
      assert.equal(1, p.connections())
      p.stop()
    end)

    it("two different Content-Length headers are a protocol error (network), in either order, never read", function()
      for _, head in ipairs {
        { "Content-Length: 10", "Content-Length: " .. #PAGE },
        { "Content-Length: " .. #PAGE, "Content-Length: 10" },
        { "Content-Length: " .. #PAGE .. ", 10" },
      } do
        local p = peer(response(head))
        local err = fails(osvi.new { token = T, base_url = p.url, max_retries = 2, retry_base = 0 })
        assert.equal("network", err.kind)
        assert.equal(200, err.status)
        assert.matches("a protocol error: the response has two different Content-Length headers", err.message, 1,
          true)
        assert.equal(1, p.connections())
        p.stop()
      end
      -- the same length twice is no contradiction
      local p = peer(response({ "Content-Length: " .. #PAGE, "Content-Length: " .. #PAGE }))
      assert.equal("via-peer", assert(osvi.new { token = T, base_url = p.url }:page {}).data[1].call_id)
      p.stop()
    end)

    it("no file descriptors left says so, and is not retried", function()
      local out = run_with_fds(64, string.format([[
        local osvi = require "osvi"
        local c = osvi.new { token = %q, base_url = %q, max_retries = 2, retry_base = 0, prefetch = 0 }
        local files = use_up_fds()
        local page, err = c:page {}
        print(err.kind, err.attempts, err.message)
      ]], T, server.url))
      assert.matches("^network\t1\tno file descriptors left to open a connection %(Too many open files%)", out)
      assert.equal(0, server:stats().requests)
    end)

    it("no file descriptors left for a prefetching cursor's epoll descriptor: an error object that says so",
      function()
      local out = run_with_fds(64, string.format([[
        local osvi = require "osvi"
        local c = osvi.new { token = %q, base_url = %q, prefetch = 4 }
        local files = use_up_fds()
        local ok, err = pcall(function() for _ in c:calls {} do end end)
        print(ok, type(err) == "table" and err.kind or type(err), type(err) == "table" and err.message or err)
        for i = 1, 8 do files[i]:close() end -- the client stays usable once descriptors are back
        local page, perr = c:page { per_page = 1 }
        print(page and page.data[1] ~= nil, perr)
      ]], T, server.url))
      assert.matches("^false\tnetwork\tno file descriptors left for the transfers' epoll descriptor "
        .. "%(Too many open files%)\ntrue\tnil\n", out)
    end)

    it("a server that is down: the final error says how many attempts over how long", function()
      local c = osvi.new { token = T, base_url = "http://127.0.0.1:" .. H.closed_port(), max_retries = 2,
                           retry_base = 0.2 }
      local err = fails(c)
      assert.equal("network", err.kind)
      assert.equal(3, err.attempts)
      local secs = tonumber(err.message:match("%(3 attempts over (%d+%.%d%d) s%)$"))
      assert.truthy(secs, err.message)
      assert.truthy(math.abs(secs - err.elapsed) < 0.01, err.message)
      assert.truthy(secs >= 0.29 and secs < 3, err.message) -- 0.1-0.2 s, then 0.2-0.4 s
      -- one attempt: nothing to add
      err = fails(osvi.new { token = T, base_url = "http://127.0.0.1:" .. H.closed_port(), max_retries = 0 })
      assert.equal(1, err.attempts)
      assert.falsy(err.message:find("attempts", 1, true))
      -- any kind: a 503 three times
      server:script { { status = 503, times = 3 } }
      err = fails(server:client { max_retries = 2 })
      assert.matches("%(3 attempts over %d+%.%d%d s%)$", err.message)
    end)

    it("a 404 speaks of agent_uuid only when one was asked for", function()
      -- a base_url with a path the server does not serve: 404 for any query
      local c = osvi.new { token = T, base_url = server.url .. "/api", max_retries = 0 }
      local err = fails(c)
      assert.equal("not_found", err.kind)
      assert.falsy(err.message:find("agent_uuid on this account", 1, true))
      assert.matches("no agent_uuid was asked for: is base_url the API's root?", err.message, 1, true)
      err = H.fails(server:client(), { agent_uuid = "agent_nobody" })
      assert.equal("not_found", err.kind)
      assert.matches("is the agent_uuid on this account?", err.message, 1, true)
      -- the same through a cursor and through osvi.core
      local ok, e = pcall(function() for _ in c:calls {} do end end)
      assert.is_false(ok)
      assert.matches("is base_url the API's root?", e.message, 1, true)
      local core = osvi.core({ status = "picked" }, { one = true })
      local r = core:requests()[1]
      core:answer(r.id, 404, "")
      local _, cerr = core:next_page()
      assert.matches("no agent_uuid was asked for", cerr.message, 1, true)
    end)
  end)

  describe("usage messages", function()
    it("say 'expected' once", function()
      local errs = {
        H.raises(osvi.query, { start_date = "2026/06/01" }),
        H.raises(osvi.query, { start_date = "2026-02-30" }),
        H.raises(osvi.query, { end_date = "2026-06-01T10:20:30" }),
        H.raises(osvi.query, { end_date = "2026-06-01T25:00:00Z" }),
        H.raises(osvi.query, { per_page = 500 }),
        H.raises(osvi.query, { status = "nope" }),
        H.raises(osvi.query, { campaign_id = "seven" }),
        new_usage { token = T, timeout = 0 },
        new_usage { token = T, max_retries = 99 },
        new_usage { token = T, base_url = "http://" },
        new_usage { token = T, proxy = "ftp://h" },
        new_usage { token = T, user_agent = "a\nb" },
        new_usage { token = "short" },
      }
      for _, err in ipairs(errs) do
        local _, n = err.message:gsub("expected", "")
        assert.equal(1, n, err.message)
      end
      assert.equal("filter 'start_date': expected a date YYYY-MM-DD (IST), a timestamp YYYY-MM-DDThh:mm:ss[.fff] "
        .. "with Z or +hh:mm, or integer epoch seconds, got '2026/06/01'", errs[1].message)
      assert.matches("got '2026-02-30' (no such day in that month)", errs[2].message, 1, true)
    end)

    it("suggest the closest option name, as for filters", function()
      local err = new_usage { token = T, timout = 5 }
      assert.equal("timout", err.key)
      assert.equal("osvi.new: unknown option 'timout' (did you mean 'timeout'?)", err.message)
      assert.matches("did you mean 'user_agent'", new_usage({ token = T, useragent = "x" }).message, 1, true)
      assert.matches("did you mean 'max_retries'", new_usage({ token = T, max_retrys = 1 }).message, 1, true)
      assert.equal("osvi.new: unknown option 'colour'", new_usage({ token = T, colour = 1 }).message)
    end)

    describe("carry the caller's file:line", function()
      local function where(err)
        assert.equal("usage", err.kind)
        return tonumber(tostring(err.where):match("security_spec%.lua:(%d+):$"))
      end
      local closed
      setup(function()
        closed = osvi.new { token = T, base_url = server.url }
        closed:close()
      end)

      it("when the user's code calls the function that checks", function()
        local c = server:client()
        -- (a parenthesised call is not a tail call: LuaJIT would drop the
        -- caller's frame, as it does for Lua's own error positions)
        local cases = {
          { function() return (osvi.new { timout = 5 }) end, line_here() },
          { function() return (c:page { stauts = 1 }) end, line_here() },
          { function() return (c:count { per_page = 0 }) end, line_here() },
          { function() return (c:calls { stauts = 1 }) end, line_here() },
          { function() return (osvi.query { stauts = 1 }) end, line_here() },
          { function() return (osvi.time("x")) end, line_here() },
          { function() return (osvi.core { stauts = 1 }) end, line_here() },
          { function() return (osvi.core({}, { prefetch = 99 })) end, line_here() },
          { function() return (closed:page {}) end, line_here() },
          { function() return (closed:calls {}) end, line_here() },
        }
        for i, case in ipairs(cases) do
          local ok, err = pcall(case[1])
          assert.is_false(ok, i)
          assert.equal(case[2], where(err), "case " .. i .. ": " .. tostring(err.where))
        end
        -- a cursor whose client closed: its step, the for loop's line
        local owner = osvi.new { token = T, base_url = server.url, prefetch = 0 }
        local cur2 = owner:calls { per_page = 5 }
        owner:close()
        local line
        local ok, err = pcall(function()
          line = line_here() for _ in cur2 do end
        end)
        assert.is_false(ok)
        assert.equal(line, where(err))
      end)

      it("when the check runs deeper, under pcall, or in the default client", function()
        local ok, err = pcall(osvi.new, { timout = 5 }) local line = line_here()
        assert.is_false(ok)
        assert.equal(line, where(err))
        local out
        ok, out = H.run_lua([[
          local osvi = require "osvi"
          local ok, err = pcall(osvi.page, { stauts = 1 })
          print(err.where)
          ok, err = pcall(function() for _ in osvi.calls { per_page = 0 } do end end)
          print(err.where)
        ]], { OSVI_API_TOKEN = T, OSVI_BASE_URL = server.url })
        assert.is_true(ok, out)
        assert.matches("^[^\n]*:3:\n[^\n]*:5:\n$", out) -- the child's lines (one line of preamble)
        ok, out = H.run_lua([[
          local osvi = require "osvi"
          local ok, err = pcall(function() return (osvi.count()) end)
          print(err.key, err.where)
        ]])
        assert.is_true(ok, out)
        assert.matches("^token\t[^\n]*:3:\n$", out)
      end)

      -- the interpreter prints an uncaught error object through __tostring
      -- (Lua 5.3, 5.4, LuaJIT; 5.1 says "(error object is not a string)")
      local printed = H.VERSION >= 5.3 or rawget(_G, "jit") ~= nil
      it("in tostring, so that an uncaught usage error points at the line to fix", function()
        local ok, out = H.run_lua([[
          local osvi = require "osvi"

          local client = osvi.new { token = "osvi-test-token1", timout = 5 }
        ]])
        assert.is_false(ok)
        if printed then
          assert.matches(":4: osvi: usage: osvi.new: unknown option 'timout' (did you mean 'timeout'?)", out, 1,
            true)
        end
        ok, out = H.run_lua(string.format([[
          local osvi = require "osvi"
          local client = osvi.new { token = %q, base_url = %q }
          local ok, err = pcall(function() for call in client:calls { stauts = "picked" } do end end)
          print(tostring(err))
        ]], T, server.url))
        assert.is_true(ok, out)
        assert.equal(":4: osvi: usage: unknown filter 'stauts' (did you mean 'status'?)\n", out:match(":%d+: .*$"))
      end)

      it("only in usage errors: the others say what happened, not where", function()
        server:script { { status = 500 } }
        local err = H.fails(server:client { max_retries = 0 })
        assert.is_nil(err.where)
        assert.matches("^osvi: server", tostring(err))
      end)
    end)
  end)
end)
