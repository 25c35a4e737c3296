-- How osvi is built and installed, checked in the files themselves (what
-- make check-luarocks checks by doing it): the rockspecs take every Lua osvi
-- runs on and need no CURL_* variable; the compatibility layer is osvi's own;
-- the LuaJIT packages have one name everywhere; the make files share one
-- package installer and one list of warning flags.
local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function lines_of(cmd)
  local p = assert(io.popen(cmd))
  local t = {}
  for line in p:lines() do t[#t + 1] = line end
  p:close()
  return t
end

local ROCKSPECS = { "rockspec/osvi-0.1.0-1.rockspec", "rockspec/osvi-scm-1.rockspec" }
-- every make file of the project
local MAKE_FILES = lines_of("ls Makefile lint.mk mk/*.mk bench/bench.mk spec/c/check.mk spec/fuzz/fuzz.mk "
  .. "examples/embed/Makefile 2>/dev/null")

describe("packaging", function()
  it("the rockspecs take Lua 5.1 to 5.4 (LuaJIT is LuaRocks' 5.1) and no CURL_* variable", function()
    for _, path in ipairs(ROCKSPECS) do
      local spec = {}
      local chunk = assert((loadstring or load)(slurp(path), path))
      if setfenv then setfenv(chunk, spec) else chunk = assert(load(slurp(path), path, "t", spec)) end
      chunk()
      local lua
      for _, dep in ipairs(spec.dependencies) do
        if dep:match("^lua ") then lua = dep end
      end
      assert.equal("lua >= 5.1, < 5.5", lua, path)
      assert.is_nil(spec.external_dependencies, path)
      assert.falsy(slurp(path):find("CURL_INCDIR", 1, true), path)
      assert.equal("make", spec.build.type, path)
      assert.equal("mk/rock.mk", spec.build.makefile, path)
      assert.equal("bin/osvi-calls", spec.build.install.bin["osvi-calls"], path)
    end
  end)

  it("the compatibility layer is osvi's own: nothing includes compat-5.3.h or needs lua-compat53", function()
    for _, path in ipairs(lines_of("ls src/*.c src/*.h")) do
      assert.falsy(slurp(path):find("compat-5.3", 1, true), path)
    end
    for _, path in ipairs(MAKE_FILES) do
      assert.falsy(slurp(path):find("compat53", 1, true), path)
    end
    assert.falsy(slurp("examples/openresty/run.sh"):find("compat53", 1, true))
  end)

  it("names the LuaJIT packages one way: luajit2 and libluajit2-5.1-dev", function()
    -- installing Debian's libluajit-5.1-dev removes nginx's Lua module
    assert.matches("VERSION_PKGS_luajit = luajit2 libluajit2%-5%.1%-dev\n", slurp("Makefile"))
    for _, path in ipairs { "Makefile", "README.md", "examples/openresty/README.md", "examples/openresty/run.sh" } do
      local text = slurp(path)
      assert.truthy(text:find("libluajit2-5.1-dev", 1, true), path)
      -- the other name only where a text warns against it
      for line in text:gmatch("[^\n]+") do
        if line:find("libluajit%-5%.1%-dev") then
          assert.truthy(line:find("not `luajit`", 1, true) or line:find("conflicts with", 1, true)
            or line:find("would remove", 1, true) or line:find("removes", 1, true), path .. ": " .. line)
        end
      end
    end
  end)

  it("one make fragment installs packages, one holds the warning flags", function()
    for _, path in ipairs(MAKE_FILES) do
      local text = slurp(path)
      if path ~= "mk/pkgs.mk" then
        assert.falsy(text:find("dpkg", 1, true), path .. " installs packages itself")
        assert.falsy(text:find("apt-get install", 1, true), path .. " installs packages itself")
      end
      if path ~= "mk/warn.mk" then
        assert.falsy(text:find("-Wextra", 1, true), path .. " lists warning flags itself")
      end
    end
    assert.matches("define ensure_pkgs", slurp("mk/pkgs.mk"))
    assert.matches("OSVI_WARN = %-Wall %-Wextra", slurp("mk/warn.mk"))
  end)
end)
