-- One iteration to profile (the second; the first warms the server's cache):
--   spec/c/with-server.sh --calls 20000 \
--     valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out lua5.4 bench/profile.lua
--   callgrind_annotate --inclusive=yes /tmp/cg.out | grep -E 'osvi|cjson|curl'
package.cpath = "./?.so;" .. package.cpath
local osvi = require "osvi"
local client = osvi.new { token = "osvi-test-token1", base_url = assert(os.getenv("OSVI_TEST_URL")),
                          prefetch = 0 }
for _ in client:calls() do end
local n = 0
for _ in client:calls() do n = n + 1 end
print(n)
