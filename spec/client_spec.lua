-- osvi.new: options, the token, defaults from the environment, the module.
local H = require "spec.support.helper"
local osvi = require "osvi"

local function new_usage(opts)
  local err = H.raises(osvi.new, opts)
  assert.equal("usage", err.kind)
  return err
end

describe("the module", function()
  it("has its version and its functions", function()
    assert.equal("osvi 0.1.0", osvi._VERSION)
    for _, name in ipairs { "new", "calls", "page", "query", "time" } do
      assert.equal("function", type(osvi[name]), name)
    end
  end)

  it("exports only luaopen_osvi from the shared object", function()
    local p = io.popen("nm -D --defined-only " .. H.module_file() .. " | awk '$2 ~ /^[TDB]$/ {print $3}'")
    local names = {}
    for line in p:lines() do names[#names + 1] = line end
    p:close()
    assert.same({ "luaopen_osvi" }, names)
  end)

  it("does not write a global", function()
    local ok, out = H.run_lua([[
      local before = {}
      for k in pairs(_G) do before[k] = true end
      require "osvi"
      for k in pairs(_G) do if not before[k] then print("global " .. k) end end
    ]])
    assert.is_true(ok)
    assert.equal("", out)
  end)
end)

describe("osvi.new", function()
  it("needs a token of 16 printable non-space ASCII characters", function()
    assert.equal("token", new_usage({}).key)
    assert.matches("OSVI_API_TOKEN", new_usage({}).message, 1, true)
    assert.equal("token", new_usage({ token = "short" }).key)
    assert.equal("token", new_usage({ token = "0123456789abcdef0" }).key)
    assert.equal("token", new_usage({ token = "0123456789 abcde" }).key)
    assert.equal("token", new_usage({ token = "0123456789\tabcde" }).key)
    assert.equal("token", new_usage({ token = 1234567890123456 }).key)
    assert.truthy(osvi.new { token = "!#$%&'()*+,-./:~" })
  end)

  it("never shows the token, not even a wrong one", function()
    local wrong = "s3cr3t-t0ken-xyz!"
    local err = new_usage { token = wrong }
    assert.falsy(tostring(err):find("s3cr3t", 1, true))
    local c = osvi.new { token = "s3cr3t-t0ken-xyz", base_url = "http://127.0.0.1:9" }
    assert.falsy(tostring(c):find("s3cr3t", 1, true))
    assert.matches("^osvi%.Client %(.*http://127%.0%.0%.1:9%)$", tostring(c))
  end)

  it("checks every option by name and type", function()
    local t = "0123456789abcdef"
    assert.equal("tokn", new_usage({ token = t, tokn = t }).key)
    assert.matches("unknown option 'tokn'", new_usage({ token = t, tokn = t }).message, 1, true)
    assert.equal("token\0", new_usage({ token = t, ["token\0"] = t }).key)
    assert.equal("timeout", new_usage({ token = t, timeout = 0 }).key)
    assert.equal("timeout", new_usage({ token = t, timeout = "30" }).key)
    assert.equal("connect_timeout", new_usage({ token = t, connect_timeout = -1 }).key)
    assert.equal("max_retries", new_usage({ token = t, max_retries = 1.5 }).key)
    assert.equal("max_retries", new_usage({ token = t, max_retries = -1 }).key)
    assert.equal("retry_base", new_usage({ token = t, retry_base = -0.5 }).key)
    assert.equal("max_response_bytes", new_usage({ token = t, max_response_bytes = 10 }).key)
    assert.equal("base_url", new_usage({ token = t, base_url = "ftp://x" }).key)
    assert.equal("base_url", new_usage({ token = t, base_url = "api.osvi.ai" }).key)
    assert.equal("base_url", new_usage({ token = t, base_url = "https://x/?a=b" }).key)
    assert.equal("user_agent", new_usage({ token = t, user_agent = 5 }).key)
    assert.equal("usage", H.raises(osvi.new, "token").kind)
  end)

  it("closes, and a closed client refuses work with a usage error", function()
    local c = osvi.new { token = "0123456789abcdef", base_url = "http://127.0.0.1:9" }
    c:close()
    c:close()
    assert.equal("osvi.Client (closed)", tostring(c))
    assert.equal("usage", H.raises(c.page, c, {}).kind)
    assert.equal("usage", H.raises(c.calls, c, {}).kind)
  end)

  if H.HAS_CLOSE then
    it("is to-be-closed", function()
      -- in a child process: <close> does not parse before Lua 5.4
      local ok, out = H.run_lua([[
        local osvi = require "osvi"
        local seen
        do
          local c <close> = osvi.new { token = "0123456789abcdef" }
          seen = c
        end
        print(tostring(seen))
      ]])
      assert.is_true(ok, out)
      assert.equal("osvi.Client (closed)\n", out)
    end)
  else
    it("has no __close before Lua 5.4: close() or the garbage collector closes it", function()
      local c = osvi.new { token = "0123456789abcdef" }
      assert.is_nil(getmetatable(c).__close)
      c:close()
      assert.equal("osvi.Client (closed)", tostring(c))
    end)
  end
end)

describe("the environment and the default client", function()
  local server
  setup(function() server = H.start { calls = 30 } end)
  teardown(function() server:stop() end)

  it("takes token and base_url from OSVI_API_TOKEN and OSVI_BASE_URL", function()
    local ok, out = H.run_lua([[
      local osvi = require "osvi"
      local n = 0
      for call in osvi.calls { status = "picked" } do n = n + 1 end
      local page = assert(osvi.page { per_page = 2 })
      print(n > 0, #page.data, page.meta.total_count)
      local c = osvi.new()
      print(c:page { per_page = 1 }.meta.total_count)
    ]], { OSVI_API_TOKEN = H.TOKEN, OSVI_BASE_URL = server.url })
    assert.is_true(ok, out)
    assert.equal("true\t2\t30\n30\n", out)
  end)

  it("fails with a usage error naming the token when the environment has none", function()
    local ok, out = H.run_lua([[
      local osvi = require "osvi"
      local ok, err = pcall(osvi.page, {})
      print(err.kind, err.key)
    ]])
    assert.is_true(ok, out)
    assert.equal("usage\ttoken\n", out)
  end)

  it("sends API-Token, Accept and a User-Agent naming osvi, libcurl and Lua", function()
    server:reset()
    local c = server:client()
    assert(c:page {})
    local req = server:stats().log[1]
    assert.equal(H.TOKEN, req.headers["api-token"])
    assert.equal("application/json", req.headers["accept"])
    -- the Lua of the build: "Lua 5.4", "Lua 5.3", "Lua 5.1" (LuaJIT too)
    assert.matches("^osvi%-lua/0%.1%.0 libcurl/%d+%.%d+%.%d+ " .. (_VERSION:gsub("%.", "%%.")) .. "$",
      req.headers["user-agent"])
    local c2 = server:client { user_agent = "report/1.0" }
    assert(c2:page {})
    assert.equal("report/1.0", server:stats().log[2].headers["user-agent"])
  end)
end)
