-- Export calls as CSV (RFC 4180: a header row, CRLF line ends, quoted fields
-- where needed), with the osvi library used directly.
--
--   OSVI_API_TOKEN=... lua5.4 examples/export_csv.lua [start_date [end_date]] > calls.csv
--
-- OSVI_BASE_URL points it at another server: `sh examples/with_server.sh
-- lua5.4 examples/export_csv.lua` runs it against the local one.
-- (bin/osvi-calls --format csv writes the same file, with more options.)
local osvi = require "osvi"

local COLUMNS = {
  "call_id", "agent_uuid", "agent_name", "phone_number", "from_number", "status", "call_type",
  "duration_seconds", "call_ended_by", "call_ended_reason", "campaign_id", "campaign_upload_id",
  "tag_id", "tag_name", "tag_color_code", "created_at", "call_picked_at",
}

-- A field as text, quoted when it holds a comma, a quote or a line break.
local function field(v)
  local s = v == nil and "" or (math.type(v) == "integer" and string.format("%d", v) or tostring(v))
  if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

local function export(out, filters)
  out:write(table.concat(COLUMNS, ","), "\r\n")
  local client <close> = osvi.new { prefetch = 8 } -- token and URL from the environment
  local row = {}
  for call in client:calls(filters) do
    local tag = call.tag or {}
    for i, name in ipairs(COLUMNS) do
      local tag_key = name:match("^tag_(.+)$")
      row[i] = field(tag_key and tag[tag_key] or call[name])
    end
    out:write(table.concat(row, ","), "\r\n")
  end
end

-- A failure (osvi raises an error object) ends the export with its message
-- and a non-zero status, so a short file is never taken for a complete one.
local ok, err = pcall(export, io.stdout, { start_date = arg[1], end_date = arg[2] })
if not ok then
  io.stderr:write("export_csv: ", tostring(err), "\n")
  os.exit(1)
end
