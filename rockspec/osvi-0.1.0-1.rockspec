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
dependencies = {
   "lua >= 5.4, < 5.5",
   "lua-cjson >= 2.1.0",
}
external_dependencies = {
   CURL = { header = "curl/curl.h" },
}
build = {
   type = "builtin",
   modules = {
      osvi = {
         sources = {
            "src/osvi.c", "src/client.c", "src/cursor.c", "src/core.c", "src/transport.c", "src/query.c",
            "src/http.c", "src/decode.c", "src/error.c", "src/time.c",
         },
         defines = { "_POSIX_C_SOURCE=200809L" },
         libraries = { "curl", "pthread" },
         incdirs = { "$(CURL_INCDIR)" },
         libdirs = { "$(CURL_LIBDIR)" },
      },
   },
   install = {
      bin = { ["osvi-calls"] = "bin/osvi-calls" },
   },
}
