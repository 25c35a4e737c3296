-- luacheck (Debian's lua-check 1.1) for every Lua file of the project:
--   luacheck bin/osvi-calls lua spec examples bench     (or: make -f lint.mk luacheck)
-- Files are matched by directory pattern, so new files in examples/ and
-- bench/ are covered as they appear.

-- Lua 5.4 unless a section below says otherwise.
std = "lua54"
max_line_length = 120
codes = true

-- What runs on Lua 5.4, 5.3, 5.1 and LuaJIT alike (their own headers say
-- so): the union of their globals, so that a version check such as
-- `table.unpack or unpack` or `rawget(math, "type")` is not an error.
local any_lua = "lua51+lua53+lua54+luajit"

-- the command-line tool
files["bin/osvi-calls"] = { std = any_lua }
-- the installed Lua modules: osvi.sync (every version), resty.osvi (OpenResty: LuaJIT and ngx)
files["lua/osvi"] = { std = any_lua }
files["lua/resty"] = { std = "ngx_lua" }

-- the specs run under make test-versions too, inside busted. 512 (loop
-- executed at most once): `for _ in c:calls() do break end` is what the
-- specs of closing and prefetching test, on purpose.
files["spec"] = { std = any_lua .. "+busted", ignore = { "512" } }
-- the local server stays on Lua 5.4 (see the Makefile), and is no spec
files["spec/support/server.lua"] = { std = "lua54" }
files["spec/support/osvi_server.lua"] = { std = "lua54" }

-- examples: report.lua is kept to what every version has; export_csv.lua
-- uses <close> (5.4); embed/ runs inside the C host (5.4)
files["examples/report.lua"] = { std = any_lua }

-- OpenResty: LuaJIT plus lua-nginx-module's `ngx` and `ndk`
files["examples/openresty"] = { std = "ngx_lua" }

-- benchmarks: Lua 5.4 (string.pack, integers), like the server they drive
files["bench"] = { std = "lua54" }
-- the runner prints wide result tables from long format strings
files["bench/run.lua"] = { std = "lua54", max_line_length = 150 }
