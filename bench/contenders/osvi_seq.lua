-- osvi, one page at a time: osvi.new{..., prefetch = 0}.
local osvi = require "osvi"
local bench = require "common"

local options = { token = bench.token, base_url = bench.base_url, ca_file = bench.ca_file, prefetch = 0 }
local ok, client = pcall(osvi.new, options)
if not ok and type(client) == "table" and client.kind == "usage" and client.key == "prefetch" then
  -- An osvi from before `prefetch`: it always reads one page at a time.
  options.prefetch = nil
  client = osvi.new(options)
elseif not ok then
  error(client, 0)
end

local sum = bench.checksum()
for call in client:calls { per_page = bench.per_page } do sum:add(call.call_id) end
sum:report()
