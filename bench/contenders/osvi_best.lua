-- osvi with its best settings: osvi.new{..., prefetch = N}, N pages in flight ahead
-- (BENCH_PREFETCH). An osvi without `prefetch` refuses the option: this script then prints
-- `unavailable: <error>` and exits with status 3, which the runner reports as "not available".
local osvi = require "osvi"
local bench = require "common"

local ok, client = pcall(osvi.new, { token = bench.token, base_url = bench.base_url,
                                     ca_file = bench.ca_file, prefetch = bench.prefetch })
if not ok then
  if type(client) == "table" and client.kind == "usage" and client.key == "prefetch" then
    io.stdout:write("unavailable: ", tostring(client), "\n")
    os.exit(3)
  end
  error(client, 0)
end

local sum = bench.checksum()
for call in client:calls { per_page = bench.per_page } do sum:add(call.call_id) end
sum:report()
