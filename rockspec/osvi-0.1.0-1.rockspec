rockspec_format = "3.0"
package = "osvi"
version = "0.1.0-1"
source = {
   url = "git+https://github.com/osvi-ai/osvi-lua",
   tag = "v0.1.0",
}
description = {
   summary = "Read your calls from the OSVI voice-agent API",
   detailed = [[
osvi is a Lua C module for the OSVI "List calls" endpoint (GET /v1/calls):
checked filters, libcurl with keep-alive and retries, lua-cjson decoding
into plain Lua tables, and a lazy page iterator.
]],
   homepage = "https://github.com/osvi-ai/osvi-lua",
   license = "MIT",
}
-- Lua 5.1 to 5.4, LuaJIT 2.1 (which LuaRocks sees as Lua 5.1); the
-- compatibility layer is osvi's own (src/compat.h)
dependencies = {
   "lua >= 5.1, < 5.5",
   "lua-cjson >= 2.1.0",
}
build = {
   -- mk/rock.mk builds build/rock/osvi.so with libcurl's flags from pkg-config
   -- or curl-config, else where the compiler looks by default (on Debian and
   -- Ubuntu, the multiarch directories that LuaRocks' own search misses): no
   -- CURL_* variable is needed, and where libcurl is missing it stops saying
   -- which package to install. CURL_CFLAGS and CURL_LIBS in the environment
   -- replace the flags.
   type = "make",
   makefile = "mk/rock.mk",
   build_variables = {
      CC = "$(CC)",
      CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      LUA_INCDIR = "$(LUA_INCDIR)",
   },
   install_variables = {
      INST_LIBDIR = "$(LIBDIR)",
   },
   install = {
      lua = {
         -- for OpenResty / nginx's Lua module (LuaJIT): the cosocket transport
         ["resty.osvi"] = "lua/resty/osvi.lua",
         ["resty.osvi.http"] = "lua/resty/osvi/http.lua",
         -- osvi-calls sync: a local copy in SQLite or PostgreSQL (LuaDBI:
         -- Debian's lua-dbi-sqlite3 / lua-dbi-postgresql, or the luadbi rocks)
         ["osvi.sync"] = "lua/osvi/sync.lua",
         ["osvi.sync_cli"] = "lua/osvi/sync_cli.lua",
      },
      bin = { ["osvi-calls"] = "bin/osvi-calls" },
   },
}
