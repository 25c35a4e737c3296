--[[
bench/contenders/common.lua -- the settings every contender shares, from the environment
the runner (bench/run.lua) sets:

  OSVI_BASE_URL, OSVI_API_TOKEN   where to read, with which token (both required)
  BENCH_PER_PAGE                  page size (default 100)
  BENCH_CA_FILE                   CA certificate to trust for https (optional)
  BENCH_PREFETCH                  pages in flight ahead for osvi-best (default 16)
]]

local M = {}

M.base_url = assert(os.getenv("OSVI_BASE_URL"), "OSVI_BASE_URL is not set")
M.token = assert(os.getenv("OSVI_API_TOKEN"), "OSVI_API_TOKEN is not set")
M.per_page = math.tointeger(tonumber(os.getenv("BENCH_PER_PAGE") or "100"))
M.prefetch = math.tointeger(tonumber(os.getenv("BENCH_PREFETCH") or "16"))
local ca = os.getenv("BENCH_CA_FILE")
M.ca_file = ca ~= "" and ca or nil
M.checksum = require "checksum"

-- The URL of one page, with the query in the order osvi writes it: the server caches whole
-- responses by their raw query string, so every contender then reads the same cached pages.
function M.page_url(page)
  return string.format("%s/v1/calls?page=%d&per_page=%d", M.base_url, page, M.per_page)
end

return M
