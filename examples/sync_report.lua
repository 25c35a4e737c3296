-- The call report of examples/report.lua -- counts by status and by agent, talk time, pickup
-- rate, calls per IST day -- as SQL over the local copy that `osvi-calls sync` keeps, with no
-- request to the API:
--
--   osvi-calls sync --db sqlite:calls.db          # once, then as often as you like
--   lua5.4 examples/sync_report.lua sqlite:calls.db [start_date [end_date]]
--   lua5.4 examples/sync_report.lua postgres://user@host/db
--
-- The same dates as report.lua: inclusive bounds on call_picked_at, a date being a whole IST
-- day. The database defaults to $OSVI_SYNC_DB, else sqlite:osvi-calls.db. Each number is one
-- SQL aggregate (the same statements work in SQLite and PostgreSQL, but for the IST day); the
-- output is report.lua's, line for line, for the same calls.
package.path = package.path .. ";./lua/?.lua" -- from a checkout, when not installed
local osvi = require "osvi"
local sync = require "osvi.sync"

local db = arg[1] or os.getenv("OSVI_SYNC_DB") or sync.DEFAULT_DB
local start_date, end_date = arg[2], arg[3]
local store = sync.open(db)

-- the bounds on call_picked_at, as the API reads start_date and end_date
local where, args = "", {}
if start_date then
  where = " WHERE call_picked_epoch >= ?"
  args[1] = osvi.time(start_date)
  if end_date then
    where = where .. " AND call_picked_epoch <= ?"
    args[2] = osvi.time(end_date) + (#end_date == 10 and 86399 or 0) -- a date: its whole IST day
  end
end

-- integers are read as text (LuaDBI reads integer columns into a C int)
local function query(sql) return store:query(sql, table.unpack(args)) end
local function n(v) return math.floor(tonumber(v) or 0) end

local PICKED = "CASE WHEN status = 'picked' THEN 1 ELSE 0 END"
local TALK = "CASE WHEN status = 'picked' THEN COALESCE(duration_seconds, 0) ELSE 0 END"
local COUNTS = "CAST(count(*) AS TEXT) AS calls, CAST(sum(" .. PICKED .. ") AS TEXT) AS picked, "
  .. "CAST(sum(" .. TALK .. ") AS TEXT) AS talk"
-- the IST day a call was created on
local DAY = store.pg and "to_char(to_timestamp(created_epoch + 19800) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
  or "strftime('%Y-%m-%d', created_epoch + 19800, 'unixepoch')"

local totals = query("SELECT " .. COUNTS .. " FROM calls" .. where)[1]
local by_status = query("SELECT COALESCE(status, '?') AS status, CAST(count(*) AS TEXT) AS calls FROM calls"
  .. where .. " GROUP BY COALESCE(status, '?') ORDER BY count(*) DESC, 1")
local by_agent = query("SELECT COALESCE(agent_name, agent_uuid, '?') AS agent, " .. COUNTS .. " FROM calls"
  .. where .. " GROUP BY COALESCE(agent_name, agent_uuid, '?') ORDER BY 1")
local by_day = query("SELECT COALESCE(" .. DAY .. ", '?') AS day, " .. COUNTS .. " FROM calls" .. where
  .. " GROUP BY 1 ORDER BY 1")
store:close()

local floor = math.floor
local function hms(s)
  return string.format("%d:%02d:%02d", floor(s / 3600), floor(s / 60) % 60, s % 60)
end
-- pads to a width in characters, not bytes (agent names may be UTF-8)
local function pad(s, width)
  local _, chars = s:gsub("[^\128-\191]", "")
  return s .. string.rep(" ", width - chars)
end
local function pct(a, b) return b > 0 and string.format("%5.1f%%", 100 * a / b) or "    -" end

local total, picked, talk = n(totals.calls), n(totals.picked), n(totals.talk)
print(string.format("OSVI call report%s", start_date and
  string.format(" (%s to %s)", start_date, end_date or "now") or ""))
print(string.format("calls %d, picked %d, pickup rate %s, talk time %s, average call %s",
  total, picked, pct(picked, total), hms(talk), hms(picked > 0 and floor(talk / picked) or 0)))

print("\nby status")
for _, r in ipairs(by_status) do
  print(string.format("  %-12s %6d  %s", r.status, n(r.calls), pct(n(r.calls), total)))
end

print("\nby agent                      calls  picked  pickup   talk time")
for _, r in ipairs(by_agent) do
  print(string.format("  %s %6d  %6d  %s  %10s", pad(r.agent, 26), n(r.calls), n(r.picked),
    pct(n(r.picked), n(r.calls)), hms(n(r.talk))))
end

print("\nby IST day     calls  picked  pickup   talk time")
for _, r in ipairs(by_day) do
  print(string.format("  %s %6d  %6d  %s  %10s", r.day, n(r.calls), n(r.picked), pct(n(r.picked), n(r.calls)),
    hms(n(r.talk))))
end
