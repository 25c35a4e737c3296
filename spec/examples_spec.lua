-- The examples run against the local server: examples/report.lua and
-- examples/export_csv.lua (whose file must be the CLI's --format csv).
-- The examples are Lua 5.4 scripts: on other versions (make test-versions)
-- this spec is pending.
local H = require "spec.support.helper"

local CPATH = (os.getenv("OSVI_CPATH") or "./?.so") .. ";;"

local server

-- Runs `lua examples/<script> args...` against the server; returns the exit
-- status, stdout and stderr.
local function run(script, args)
  local out, err = os.tmpname(), os.tmpname()
  local cmd = string.format(
    "env -u OSVI_LOG OSVI_API_TOKEN='%s' OSVI_BASE_URL='%s' LUA_CPATH='%s' %s %s %s >%s 2>%s </dev/null",
    H.TOKEN, server.url, CPATH, H.LUA, script, table.concat(args or {}, " "), out, err)
  local p = assert(io.popen(cmd .. "; echo $?"))
  local code = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  local function slurp(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    os.remove(path)
    return s
  end
  return code, slurp(out), slurp(err)
end

if _VERSION ~= "Lua 5.4" then
  describe("examples", function()
    it("run on Lua 5.4", function() pending("the examples are Lua 5.4 scripts") end)
  end)
  return
end

describe("examples", function()
  setup(function() server = H.start { calls = 250 } end)
  teardown(function() server:stop() end)

  it("report.lua prints the report of every call", function()
    local code, out, err = run("examples/report.lua")
    assert.equal(0, code, err)
    assert.matches("^OSVI call report\ncalls 250, picked %d+", out)
    assert.matches("\nby status\n", out, 1, true)
    code, out, err = run("examples/report.lua", { "2026-06-30", "2026-06-30" })
    assert.equal(0, code, err)
    assert.matches("^OSVI call report %(2026%-06%-30 to 2026%-06%-30%)\n", out)
  end)

  it("export_csv.lua writes the same CSV as osvi-calls --format csv", function()
    local code, out, err = run("examples/export_csv.lua")
    assert.equal(0, code, err)
    assert.equal("", err)
    local code2, cli, err2 = run("bin/osvi-calls", { "--format", "csv" })
    assert.equal(0, code2, err2)
    assert.equal(cli, out)
    local n = 0
    for _ in out:gmatch("\r\n") do n = n + 1 end
    assert.equal(251, n)
  end)

  it("export_csv.lua fails loudly, with a non-zero status", function()
    server:script { { fault = "pass" }, { status = 404 } }
    local code, _, err = run("examples/export_csv.lua")
    assert.equal(1, code)
    assert.matches("^export_csv: osvi: not_found", err)
  end)
end)
