-- A call report: counts by status and by agent, talk time, pickup rate,
-- and calls per IST day.
--
--   OSVI_API_TOKEN=... lua5.4 examples/report.lua [start_date [end_date]]
--
-- Runs on Lua 5.4, 5.3, 5.1 and LuaJIT (no integer division, no utf8 library).
-- OSVI_BASE_URL points it at another server (the local one in `make demo`).
local osvi = require "osvi"

local start_date, end_date = arg[1], arg[2]
local IST = 5 * 3600 + 30 * 60

local total, picked, talk = 0, 0, 0
local by_status, by_agent, by_day = {}, {}, {}

local function bump(t, k, secs)
  local row = t[k]
  if not row then row = { calls = 0, picked = 0, talk = 0 }; t[k] = row end
  row.calls = row.calls + 1
  if secs then row.picked, row.talk = row.picked + 1, row.talk + secs end
end

local cur = osvi.calls { start_date = start_date, end_date = end_date }
for call in cur do
  total = total + 1
  local secs = call.status == "picked" and (call.duration_seconds or 0) or nil
  if secs then picked, talk = picked + 1, talk + secs end
  by_status[call.status or "?"] = (by_status[call.status or "?"] or 0) + 1
  bump(by_agent, call.agent_name or call.agent_uuid or "?", secs)
  bump(by_day, os.date("!%Y-%m-%d", osvi.time(call.created_at) + IST), secs)
end

local floor = math.floor
local function hms(s)
  return string.format("%d:%02d:%02d", floor(s / 3600), floor(s / 60) % 60, s % 60)
end
-- pads to a width in characters, not bytes (agent names may be UTF-8): the
-- bytes that do not continue a UTF-8 sequence
local function pad(s, width)
  local _, chars = s:gsub("[^\128-\191]", "")
  return s .. string.rep(" ", width - chars)
end
local function pct(a, b) return b > 0 and string.format("%5.1f%%", 100 * a / b) or "    -" end
local function sorted_keys(t, by)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, by or function(a, b) return a < b end)
  return keys
end

print(string.format("OSVI call report%s", start_date and
  string.format(" (%s to %s)", start_date, end_date or "now") or ""))
print(string.format("calls %d, picked %d, pickup rate %s, talk time %s, average call %s",
  total, picked, pct(picked, total), hms(talk), hms(picked > 0 and floor(talk / picked) or 0)))

print("\nby status")
for _, s in ipairs(sorted_keys(by_status, function(a, b) return by_status[a] > by_status[b] end)) do
  print(string.format("  %-12s %6d  %s", s, by_status[s], pct(by_status[s], total)))
end

print("\nby agent                      calls  picked  pickup   talk time")
for _, a in ipairs(sorted_keys(by_agent)) do
  local r = by_agent[a]
  print(string.format("  %s %6d  %6d  %s  %10s", pad(a, 26), r.calls, r.picked, pct(r.picked, r.calls), hms(r.talk)))
end

print("\nby IST day     calls  picked  pickup   talk time")
for _, d in ipairs(sorted_keys(by_day)) do
  local r = by_day[d]
  print(string.format("  %s %6d  %6d  %s  %10s", d, r.calls, r.picked, pct(r.picked, r.calls), hms(r.talk)))
end
