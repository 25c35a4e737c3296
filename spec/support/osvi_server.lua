--[[
spec/support/osvi_server.lua -- the local stand-in for the OSVI "List calls" API, as a module.

spec/support/server.lua is the command that runs it (its header says how); this file is what
it runs, `require`-able so that its parts can be tested one by one (spec/server_spec.lua):

  local server = require "spec.support.osvi_server"     -- from the repository root
  local opts = assert(server.parse_args { "--calls", "50", "--now", "2026-06-30T20:00:00+05:30" })
  local app = server.new(opts)       -- the data set is made here; nothing is bound yet
  app.api_result { method = "GET", path = "/v1/calls", query = "page=2",
                   headers = { ["api-token"] = opts.token } }   --> 200, body
  app.control { method = "POST", path = "/_control/arrive", body = '{"calls":3}' } --> 200, body
  app.run()                          -- binds, prints the "listening" line, serves until shut down

Plain Lua 5.4 (5.3 works too) + LuaSocket + lua-cjson.

API (the real API's "List calls", as the README's Filters and "What you get back" sections
describe it):
  GET /v1/calls            needs the header `API-Token`; filters status, agent_uuid, campaign_id,
                           campaign_upload_id, phone_number, call_type, start_date, end_date;
                           paging with page (default 1) and per_page (default 25, capped at 100).

Control API (no token):
  GET  /_control/stats     {"requests","connections","open_connections","max_inflight","inflight",
                           "arrived","log":[...]}; "inflight": API requests being answered now
                           (sleeping included), "arrived": calls that arrived since the last reset;
                           each log entry's "sent": when its answer was made and sent, after
                           any latency (epoch seconds)
  GET  /_control/calls     {"data":[every call of the listing now, newest first]}
  POST /_control/reset     zero the counters, clear the log and the fault script, restore latency,
                           clear the other knobs of config, drop the arrived calls (back to the
                           data set as started)
  POST /_control/config    a JSON object of any of these (all checked first: a 400 changes nothing):
                           "latency_ms": 20      sleep that long before answering each API request
                           "arrivals_per_request": 7  that many calls arrive before each /v1/calls
                                                 request is answered (0: none)
                           "burst_page": 3, "burst_calls": 7  (together) at the first request for
                                                 page 3 from now, 7 calls arrive before its answer
                           "slow_page": 2, "slow_ms": 300  (together) every request for page 2
                                                 sleeps 300 ms before its answer is made, so calls
                                                 that arrive meanwhile (at other requests) are in it
  POST /_control/arrive    {"calls": 7}: 7 calls arrive now; answers {"ok":true,"arrived":N}
  POST /_control/update    {"calls": 3}: the 3 oldest calls still in_progress (data set, then
                           arrived calls) end now: status picked, duration_seconds, call_ended_by
                           and call_ended_reason filled (call_picked_at they have already);
                           answers {"ok":true,"updated":N} (N <= 3: those there were). Undone
                           by reset. For spec/sync_spec.lua: calls that change after a sync.
  POST /_control/script    JSON array of fault actions, one per following API request (FIFO);
                           replaces any actions still pending. An action with "page": N is for
                           the next request for page N only (a request for page N takes the
                           first pending action for N, else the next one of the FIFO). Any
                           action may have "arrive": K, K calls arriving just before the request
                           is answered (after any latency or slow page); {"fault":"arrive",
                           "arrive":K} is "pass" for that purpose. Example: the first request for
                           page 2 gets a 503 and 7 calls arrive before its retry:
                           [{"page":2,"status":503},{"page":2,"fault":"pass","arrive":7}]
  POST /_control/shutdown  answer, then exit

Every request outside /_control/ is an API request: it is counted, logged and takes the next
scripted action (a wrong path still gets its 404, a wrong method its 405). The page of a request
is its `page` parameter (1 without one), for the path /v1/calls only.

The data set is generated from --seed with a private xorshift32 generator, so it is the same on
every run and every Lua version, apart from its dates: the newest call was created at --now
(default: when the server started), each older one 1 to 600 s (5 minutes on average) before the
one above it, so N calls cover about N * 5 minutes back from --now (300 calls: a day; 100,000:
about a year). Only the timestamps move with --now; the specs pin it
(--now 2026-06-30T20:00:00+05:30) so that their data set never changes. Each call is rendered to
JSON once at start-up; a page is cut out of that text, and whole responses are cached by query,
so a page is built only once (until calls arrive: arrived calls are kept apart, and the cache is
emptied at each arrival).

Arriving calls: new calls arrive at the top of the listing, as on a live account, when a knob
above says so (calls arrive only then, never by themselves). They come from their own xorshift32
stream (from --seed), with the same shapes and distributions as the data set, ids unlike any
other and each one newer than every call before it. The listing is the arrived calls, newest
first, then the data set; the filters and meta cover both, as they are when the answer is made.
]]

local socket = require("socket")
local cjson = require("cjson")

local M = {}

------------------------------------------------------------------------------
-- JSON output (hand-written: fixed field order, integers as integers)
------------------------------------------------------------------------------

local JSON_ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\127"] = "\\u007f",
}
for byte = 0, 31 do
  local ch = string.char(byte)
  JSON_ESCAPES[ch] = JSON_ESCAPES[ch] or string.format("\\u%04x", byte)
end

-- A JSON string literal, or null for nil. UTF-8 passes through unescaped.
local function jstr(s)
  if s == nil then return "null" end
  if s:find('[%c"\\]') then s = s:gsub('[%c"\\]', JSON_ESCAPES) end
  return '"' .. s .. '"'
end

-- A JSON integer, or null for nil.
local function jint(n)
  if n == nil then return "null" end
  return string.format("%d", n)
end

local function error_body(messages)
  local quoted = {}
  for i, m in ipairs(messages) do quoted[i] = jstr(m) end
  return '{"success":false,"errors":[' .. table.concat(quoted, ",") .. "]}"
end

------------------------------------------------------------------------------
-- Time: epoch seconds <-> civil dates, without the local time zone of the machine
------------------------------------------------------------------------------

local IST_OFFSET = 5 * 3600 + 30 * 60 -- seconds east of UTC

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1 -- day of a year starting on 1 March
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

local function days_in_month(y, m)
  if m == 2 then
    return (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)) and 29 or 28
  end
  return (m == 4 or m == 6 or m == 9 or m == 11) and 30 or 31
end

-- "2026-06-12T09:30:00+05:30" for an epoch second.
local function format_ist(t)
  return os.date("!%Y-%m-%dT%H:%M:%S+05:30", t + IST_OFFSET)
end

-- The bound named by a start_date/end_date value, in epoch milliseconds, or nil if malformed.
-- A plain date is a whole day in IST: its first millisecond for a lower bound, its last for
-- an upper one. A timestamp is an instant; a lower bound that falls inside a millisecond
-- rounds up, so both bounds stay inclusive of exactly what they name.
local function parse_bound(s, upper)
  local y, m, d, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
  if not y then return nil end
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if m < 1 or m > 12 or d < 1 or d > days_in_month(y, m) then return nil end
  local day = days_from_civil(y, m, d) * 86400
  if rest == "" then
    local first_ms = (day - IST_OFFSET) * 1000
    return upper and first_ms + 86399999 or first_ms
  end
  local hh, mi, ss, frac, zone = rest:match("^T(%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$")
  if not hh then return nil end
  hh, mi, ss = tonumber(hh), tonumber(mi), tonumber(ss)
  if hh > 23 or mi > 59 or ss > 59 then return nil end
  if frac ~= "" and not frac:match("^%.%d+$") then return nil end
  local offset = 0
  if zone ~= "Z" then
    local sign, oh, om = zone:match("^([+-])(%d%d):(%d%d)$")
    if not sign then return nil end
    oh, om = tonumber(oh), tonumber(om)
    if oh > 23 or om > 59 then return nil end
    offset = (oh * 3600 + om * 60) * (sign == "-" and -1 or 1)
  end
  local ms = (day + hh * 3600 + mi * 60 + ss - offset) * 1000
  if frac ~= "" then
    local digits = frac:sub(2)
    ms = ms + tonumber((digits .. "00"):sub(1, 3))
    if not upper and digits:sub(4):find("[1-9]") then ms = ms + 1 end
  end
  return ms
end


------------------------------------------------------------------------------
-- Command line
------------------------------------------------------------------------------

M.USAGE = [[
usage: lua5.4 spec/support/server.lua [--host 127.0.0.1] [--port 0] [--calls 300] [--seed 1]
                                      [--token osvi-test-token1] [--latency-ms 0]
                                      [--now WHEN] [--exit-with-parent]
  --now WHEN          when the newest call was created: YYYY-MM-DDThh:mm:ss with Z or +hh:mm,
                      YYYY-MM-DD (midnight IST) or epoch seconds; default: the time it starts
  --exit-with-parent  exit when the process that started the server exits (the specs' servers)
]]

local function is_integer_text(s)
  return s:match("^%-?%d+$") ~= nil and #s <= 18
end

-- Epoch seconds of a --now value, or nil: digits are epoch seconds; otherwise an ISO-8601
-- timestamp with an offset (fractions of a second dropped), or a date (its midnight in IST).
function M.parse_when(s)
  if is_integer_text(s) then return math.tointeger(tonumber(s)) end
  local ms = M.parse_bound(s, false)
  return ms and ms // 1000
end

-- One row per option: the field it sets, its default and a check that turns the text into
-- the value (or returns nil when it is not acceptable). A row with `switch` takes no value.
local OPTIONS = {
  host = { "host", "127.0.0.1", function(s) return s ~= "" and s or nil end },
  port = { "port", 0, function(s)
    local n = is_integer_text(s) and math.tointeger(tonumber(s))
    return n and n >= 0 and n <= 65535 and n or nil
  end },
  calls = { "calls", 300, function(s)
    local n = is_integer_text(s) and math.tointeger(tonumber(s))
    return n and n >= 0 and n or nil
  end },
  seed = { "seed", 1, function(s) return is_integer_text(s) and math.tointeger(tonumber(s)) or nil end },
  token = { "token", "osvi-test-token1", function(s) return s ~= "" and s or nil end },
  ["latency-ms"] = { "latency_ms", 0, function(s)
    local n = tonumber(s)
    return n and n >= 0 and n or nil
  end },
  now = { "now", nil, function(s) return M.parse_when(s) end },
  ["exit-with-parent"] = { "exit_with_parent", false, switch = true },
}

--- The options of a command line (an array of words), each with its default:
--- { host, port, calls, seed, token, latency_ms, now (nil: the time of start-up),
--- exit_with_parent }. On --help, or a word it cannot take, returns nil, the text to print
--- and the exit status (0 for --help, on stdout; 2 otherwise, on stderr).
function M.parse_args(argv)
  local opts = {}
  for _, row in pairs(OPTIONS) do opts[row[1]] = row[2] end
  local i = 1
  while i <= #argv do
    local word = argv[i]
    if word == "-h" or word == "--help" then return nil, M.USAGE, 0 end
    local name, value = word:match("^%-%-([%w-]+)=(.*)$") -- --name=value
    local row = name and OPTIONS[name]
    if not name then
      name = word:match("^%-%-([%w-]+)$")                  -- --name value, or a switch
      row = name and OPTIONS[name]
      if row and not row.switch then
        i = i + 1
        value = argv[i]
      end
    end
    if not row or (row.switch and value ~= nil) then
      return nil, "osvi-server: unknown argument '" .. word .. "'\n" .. M.USAGE, 2
    end
    local parsed
    if row.switch then
      parsed = true
    else
      parsed = value and row[3](value)
    end
    if parsed == nil then
      return nil, "osvi-server: bad value for --" .. name .. ": " .. tostring(value) .. "\n" .. M.USAGE, 2
    end
    opts[row[1]] = parsed
    i = i + 1
  end
  return opts
end

------------------------------------------------------------------------------
-- The data set
------------------------------------------------------------------------------

-- xorshift32 on plain integers: the same stream on every platform and Lua version.
local function new_rng(seed)
  local x = (seed * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFFFF -- spread nearby seeds apart
  if x == 0 then x = 0x6D2B79F5 end                       -- xorshift must not start at 0
  local function next32()
    x = x ~ ((x << 13) & 0xFFFFFFFF)
    x = x ~ (x >> 17)
    x = x ~ ((x << 5) & 0xFFFFFFFF)
    return x
  end
  for _ = 1, 8 do next32() end
  return next32
end

local function rand(rng, lo, hi)
  return lo + rng() % (hi - lo + 1)
end

-- Pick from a list of { weight, value } rows (the list carries its `total` weight).
local function pick(rng, rows)
  local r = rng() % rows.total
  for _, row in ipairs(rows) do
    r = r - row[1]
    if r < 0 then return row[2] end
  end
end

local function weighted(rows)
  local total = 0
  for _, row in ipairs(rows) do total = total + row[1] end
  rows.total = total
  return rows
end

local STATUSES = { "picked", "not_picked", "failed", "busy", "voicemail", "in_progress" }

-- The account: its agents (each with its caller ID and campaigns -> contact uploads) and tags.
local AGENTS = weighted({
  { 34, { uuid = "agent_IsZ3Q6Sf_60Eh26XQMGbz-R_og", name = "Appointment Reminder",
          from = "+911140001234", campaigns = { { 7, { 19, 21, 22 } }, { 9, { 24 } } } } },
  { 26, { uuid = "agent_7fK2pQ9xLm_Wd4Rt-8YbNc1Hs", name = "Payment Follow-up",
          from = "+912261234567", campaigns = { { 3, { 4, 5 } } } } },
  { 20, { uuid = "agent_Qm4-Zr8TbV_2xLpN6sKj0GhYw", name = "Lead Qualification",
          from = "+918041234567", campaigns = { { 12, { 30, 31 } } } } },
  { 12, { uuid = "agent_Hn5Ws_3JkP9-vBe7Tq1XzRc8D", name = "Customer Feedback Survey",
          from = "+914071234567", campaigns = { { 15, { 41 } } } } },
  { 8,  { uuid = "agent_c0Rt8_yUe4Mx-Ln2Pa6QsVb9K", name = "Collections – Hindi",
          from = "+913340001234", campaigns = { { 18, { 50, 51 } } } } },
})

local AGENT_BY_UUID = {}
for _, row in ipairs(AGENTS) do AGENT_BY_UUID[row[2].uuid] = row[2] end

local TAGS = {
  '{"id":12,"name":"interested","color_code":"#22c55e"}',
  '{"id":13,"name":"not_interested","color_code":"#ef4444"}',
  '{"id":14,"name":"callback_requested","color_code":"#f59e0b"}',
  '{"id":15,"name":"wrong_number","color_code":"#6b7280"}',
}

local OUTBOUND_STATUS = weighted({
  { 50, "picked" }, { 22, "not_picked" }, { 10, "busy" }, { 6, "failed" }, { 12, "voicemail" },
})
local INBOUND_STATUS = weighted({ { 90, "picked" }, { 7, "not_picked" }, { 3, "failed" } })

local CALL_JSON_FORMAT = '{"call_id":%s,"agent_uuid":%s,"agent_name":%s,"phone_number":%s,'
  .. '"from_number":%s,"status":%s,"call_type":%s,"duration_seconds":%d,"call_ended_by":%s,'
  .. '"call_ended_reason":%s,"campaign_id":%s,"campaign_upload_id":%s,"tag":%s,'
  .. '"created_at":%s,"call_picked_at":%s}'

-- The first 32 bits of the UUID are a generator output, and xorshift32 repeats no output
-- within its period (2^32 - 1 draws), so the ids are unique without checking.
local function uuid4(rng)
  local a, b, c, d = rng(), rng(), rng(), rng()
  return string.format("%08x-%04x-4%03x-%04x-%04x%08x",
    a, b >> 16, b & 0xFFF, 0x8000 | ((c >> 16) & 0x3FFF), c & 0xFFFF, d)
end

-- How a call ended: duration, who ended it, why. Only called for finished calls.
local function ending(rng, status)
  if status == "picked" then
    local duration = rng() % 5 == 0 and rand(rng, 181, 900) or rand(rng, 5, 180)
    if rng() % 5 < 2 then return duration, "customer", "customer-ended-call" end
    if duration == 900 then return duration, "agent", "max-duration-reached" end
    return duration, "agent", rng() % 6 == 0 and "silence-timed-out" or "assistant-ended-call"
  elseif status == "voicemail" then
    return rand(rng, 5, 60), "agent", "voicemail-reached"
  elseif status == "not_picked" then
    return 0, nil, "no-answer"
  elseif status == "busy" then
    return 0, nil, "customer-busy"
  end
  local reasons = { "invalid-number", "network-error" } -- failed; a third of them give no reason
  return 0, nil, reasons[rng() % 3 + 1]
end

-- The rest of a call once its id, agent, direction, status and number are drawn: how it ended,
-- its campaign, tag and pick-up time. Writes the fields the filters look at into `fields` at
-- index i and returns the call's JSON. Shared by generate and the calls that arrive later, so
-- both have the same shapes and distributions (and the draws stay in generate's order).
local function finish_call(rng, fields, i, id, agent, inbound, status, phone, created)
  local duration, ended_by, reason = 0, nil, nil
  if status ~= "in_progress" then duration, ended_by, reason = ending(rng, status) end
  local campaign_id, upload_id
  if not inbound then
    local campaign = agent.campaigns[rand(rng, 1, #agent.campaigns)]
    campaign_id, upload_id = campaign[1], campaign[2][rand(rng, 1, #campaign[2])]
  end
  local tag = rng() % 10 >= 4 and TAGS[rand(rng, 1, #TAGS)] or nil
  local picked
  if status == "picked" or status == "voicemail" or status == "in_progress" then
    picked = created + rand(rng, 1, 12)
  end
  local call_type = inbound and "inbound" or "outbound"
  fields.status[i], fields.agent_uuid[i], fields.call_type[i] = status, agent.uuid, call_type
  fields.campaign_id[i], fields.campaign_upload_id[i] = campaign_id or false, upload_id or false
  fields.phone_number[i] = phone
  fields.picked_ms[i] = picked and picked * 1000 or false
  return string.format(CALL_JSON_FORMAT,
    jstr(id), jstr(agent.uuid), jstr(agent.name), jstr(phone),
    jstr(inbound and phone or agent.from), jstr(status), jstr(call_type), duration,
    jstr(ended_by), jstr(reason), jint(campaign_id), jint(upload_id), tag or "null",
    jstr(format_ist(created)), jstr(picked and format_ist(picked)))
end

local function new_fields()
  return { status = {}, agent_uuid = {}, campaign_id = {}, campaign_upload_id = {},
           phone_number = {}, call_type = {}, picked_ms = {} }
end

-- Returns, for calls 1..n (newest first):
-- `fields`: the fields the filters look at, one array per field (false for null), so the heap
--   holds a few long arrays rather than a table per call for the collector to walk through;
-- `text`: the JSON of all calls joined by commas, and `from`/`to`: where each call's JSON
--   starts and ends in it. A page is cut out of `text`, so its calls are read from one place
--   in memory (pages built from 100 strings spread over the heap took several times longer).
local function generate(n, seed, newest)
  local rng = new_rng(seed)
  local fields = new_fields()
  local json, phones = {}, fields.phone_number
  local created = newest
  for i = 1, n do
    if i > 1 then created = created - rand(rng, 1, 600) end
    local id = uuid4(rng)
    local agent = pick(rng, AGENTS)
    local inbound = rng() % 100 < 20
    -- Calls still running exist only among the newest ten; the newest one always is one.
    local status
    if i == 1 or (i <= 10 and rng() % 5 == 0) then
      status = "in_progress"
    else
      status = pick(rng, inbound and INBOUND_STATUS or OUTBOUND_STATUS)
    end
    -- A quarter of the calls go to a number already called (follow-ups, call-backs).
    local phone
    if i > 1 and rng() % 4 == 0 then
      phone = phones[rand(rng, 1, i - 1)]
    else
      phone = string.format("+91%d%09d", rand(rng, 6, 9), rng() % 1000000000)
    end
    json[i] = finish_call(rng, fields, i, id, agent, inbound, status, phone, created)
  end
  local from, to, pos = {}, {}, 1
  for i = 1, n do
    from[i], to[i] = pos, pos + #json[i] - 1
    pos = to[i] + 2 -- past the comma
  end
  return fields, table.concat(json, ","), from, to
end

-- Calls that arrive while the server runs: their own stream, and a bound on any one knob.
local ARRIVAL_SEED_OFFSET = 0x41525256 -- "ARRV": their own stream, apart from the data set's
local MAX_ARRIVE = 100000              -- calls at once, through any one knob


------------------------------------------------------------------------------
-- Query parameters, validation and filtering
------------------------------------------------------------------------------

-- Percent-decoding only: in a query `+` stays `+` (it is not a space here).
local function unescape(s)
  if not s:find("%", 1, true) then return s end
  return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)) end))
end

-- name -> value; a name given twice keeps its last value; `name` alone means "".
local function parse_query(raw)
  local params = {}
  for pair in raw:gmatch("[^&]+") do
    local name, value = pair:match("^([^=]*)=?(.*)$")
    params[unescape(name)] = unescape(value)
  end
  return params
end

local function parse_integer(s)
  return is_integer_text(s) and math.tointeger(tonumber(s)) or nil
end

local function parse_positive(s)
  local n = parse_integer(s)
  return n and n >= 1 and n or nil
end

local STATUS_SET = {}
for _, s in ipairs(STATUSES) do STATUS_SET[s] = true end

-- "picked,busy" -> { picked = true, busy = true }; nil if any item is not a status.
local function parse_status_list(s)
  local set = {}
  for item in (s .. ","):gmatch("([^,]*),") do
    if not STATUS_SET[item] then return nil end
    set[item] = true
  end
  return set
end

local function identity(v) return v end

local function equals(a, b) return a == b end

-- One row per filter: how its text is parsed (nil = invalid), how the parsed value is written
-- in a cache key, which field of a call it looks at and whether that field passes.
-- The order is the order of the 422 messages.
local FILTERS = {
  { name = "status", parse = parse_status_list,
    key = function(set)
      local names = {}
      for _, s in ipairs(STATUSES) do if set[s] then names[#names + 1] = s end end
      return table.concat(names, ",")
    end,
    field = "status", test = function(status, set) return set[status] end },
  { name = "agent_uuid", parse = identity, key = identity, field = "agent_uuid", test = equals },
  { name = "campaign_id", parse = parse_integer, key = tostring, field = "campaign_id", test = equals },
  { name = "campaign_upload_id", parse = parse_integer, key = tostring,
    field = "campaign_upload_id", test = equals },
  { name = "phone_number", parse = identity, key = identity,
    field = "phone_number", test = function(phone, v) return phone:find(v, 1, true) ~= nil end },
  { name = "call_type",
    parse = function(s) return (s == "inbound" or s == "outbound") and s or nil end,
    key = identity, field = "call_type", test = equals },
  { name = "start_date", parse = function(s) return parse_bound(s, false) end, key = tostring,
    field = "picked_ms", test = function(ms, bound) return ms and ms >= bound end },
  { name = "end_date", parse = function(s) return parse_bound(s, true) end, key = tostring,
    field = "picked_ms", test = function(ms, bound) return ms and ms <= bound end },
}

local MAX_PER_PAGE = 100
local FILTER_CACHE_LIMIT = 4000000 -- call indices kept over all cached lists

-- Whether the call at index i of `fields` passes every { row, value } in `active`.
local function passes(active, fields, i)
  for _, f in ipairs(active) do
    if not f[1].test(fields[f[1].field][i], f[2]) then return false end
  end
  return true
end

------------------------------------------------------------------------------
-- HTTP responses
------------------------------------------------------------------------------

local JSON_TYPE = "application/json; charset=utf-8"

local REASONS = {
  [200] = "OK", [201] = "Created", [202] = "Accepted", [204] = "No Content",
  [301] = "Moved Permanently", [302] = "Found", [303] = "See Other",
  [307] = "Temporary Redirect", [308] = "Permanent Redirect",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [408] = "Request Timeout", [409] = "Conflict",
  [413] = "Content Too Large", [422] = "Unprocessable Entity", [429] = "Too Many Requests",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [501] = "Not Implemented", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

local function reason(status)
  return REASONS[status] or (status < 400 and "OK" or "Error")
end

-- Status line and headers, up to and including the blank line. `extra` is a list of
-- { name, value }; a Content-Type or Content-Length given there replaces the default one.
local function response_head(status, length, keep, content_type, extra)
  local given = {}
  for _, h in ipairs(extra or {}) do given[h[1]:lower()] = true end
  local lines = { "HTTP/1.1 " .. status .. " " .. reason(status) }
  if content_type and not given["content-type"] then lines[#lines + 1] = "Content-Type: " .. content_type end
  if not given["content-length"] then lines[#lines + 1] = "Content-Length: " .. length end
  for _, h in ipairs(extra or {}) do lines[#lines + 1] = h[1] .. ": " .. h[2] end
  lines[#lines + 1] = keep and "Connection: keep-alive" or "Connection: close"
  return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

-- The whole response as one string.
local function build_response(status, body, keep, content_type, extra)
  return response_head(status, #body, keep, content_type, extra) .. body
end

local function failure(status, messages, headers)
  return { status = status, body = error_body(messages), headers = headers }
end

local PAGE_START = '{"success":true,"data":['

------------------------------------------------------------------------------
-- Fault script: validation
------------------------------------------------------------------------------

local function as_integer(v)
  return type(v) == "number" and math.tointeger(v) or nil
end

local function as_number(v)
  return type(v) == "number" and v or nil
end

-- Allowed keys per kind of action ("status" is an action without "fault"), besides those
-- every action may have: fault, times, page and arrive. "arrive" is "pass" by another name,
-- for an action that is only there to have calls arrive.
local ACTION_KEYS = {
  status = { "status", "headers", "body", "content_type", "errors" },
  reset = {}, empty = {}, truncate = {}, close_after = {}, pass = {}, arrive = {},
  drip = { "interval_ms" },
  huge = { "bytes", "chunked" },
  delay = { "ms" },
  redirect = { "status", "location" },
}

-- A checked copy of one script action, or nil and the reason it is rejected.
local function check_action(raw)
  if type(raw) ~= "table" or raw[1] ~= nil then return nil, "not an object" end
  for k, v in pairs(raw) do
    if v == cjson.null then raw[k] = nil end -- null means "not given"
  end
  local kind = raw.fault or "status"
  local keys = type(kind) == "string" and ACTION_KEYS[kind]
  if not keys then return nil, "unknown fault " .. tostring(kind) end
  local allowed = { fault = true, times = true, page = true, arrive = true }
  for _, k in ipairs(keys) do allowed[k] = true end
  for k in pairs(raw) do
    if not allowed[k] then return nil, "unknown key " .. tostring(k) end
  end
  local action = { kind = kind, fault = raw.fault, left = as_integer(raw.times or 1) }
  if not action.left or action.left < 1 then return nil, "times must be an integer >= 1" end
  if raw.page ~= nil then
    action.page = as_integer(raw.page)
    if not action.page or action.page < 1 then return nil, "page must be an integer >= 1" end
  end
  if kind == "arrive" and raw.arrive == nil then return nil, "fault arrive needs arrive (a number of calls)" end
  action.arrive = as_integer(raw.arrive or 0)
  if not action.arrive or action.arrive < 0 or action.arrive > MAX_ARRIVE then
    return nil, "arrive must be an integer from 0 to " .. MAX_ARRIVE
  end

  if kind == "status" then
    action.status = as_integer(raw.status)
    if not action.status or action.status < 200 or action.status > 599 then
      return nil, "status must be an integer from 200 to 599"
    end
    action.headers = {}
    if raw.headers ~= nil then
      if type(raw.headers) ~= "table" or raw.headers[1] ~= nil then return nil, "headers must be an object" end
      for name, value in pairs(raw.headers) do
        if type(value) == "number" then value = tostring(math.tointeger(value) or value) end
        if type(name) ~= "string" or type(value) ~= "string" then
          return nil, "header values must be strings or numbers"
        end
        action.headers[#action.headers + 1] = { name, value }
      end
      table.sort(action.headers, function(a, b) return a[1] < b[1] end)
    end
    if raw.body ~= nil and type(raw.body) ~= "string" then return nil, "body must be a string" end
    if raw.content_type ~= nil and type(raw.content_type) ~= "string" then
      return nil, "content_type must be a string"
    end
    if raw.errors ~= nil then
      if type(raw.errors) ~= "table" then return nil, "errors must be an array of strings" end
      for i, e in pairs(raw.errors) do
        if math.type(i) ~= "integer" or type(e) ~= "string" then return nil, "errors must be an array of strings" end
      end
    end
    action.body, action.content_type, action.errors = raw.body, raw.content_type, raw.errors
  elseif kind == "drip" then
    action.interval = as_number(raw.interval_ms or 1000)
    if not action.interval or action.interval < 0 then return nil, "interval_ms must be a number >= 0" end
    action.interval = action.interval / 1000
  elseif kind == "huge" then
    action.bytes, action.chunked = as_integer(raw.bytes), raw.chunked or false
    if type(action.chunked) ~= "boolean" then return nil, "chunked must be a boolean" end
    if not action.bytes or action.bytes < -1 or (action.bytes == -1 and not action.chunked) then
      return nil, "bytes must be an integer >= 0 (or -1 with chunked)"
    end
  elseif kind == "delay" then
    action.delay = as_number(raw.ms)
    if not action.delay or action.delay < 0 then return nil, "ms must be a number >= 0" end
    action.delay = action.delay / 1000
  elseif kind == "redirect" then
    action.status = as_integer(raw.status or 302)
    if not action.status or action.status < 300 or action.status > 399 then
      return nil, "status must be an integer from 300 to 399"
    end
    if type(raw.location) ~= "string" then return nil, "location must be a string" end
    action.location = raw.location
  end
  return action
end

-- Default error messages of scripted statuses without a body.
local DEFAULT_ERRORS = {
  [401] = "invalid or missing API-Token", [404] = "not found", [422] = "per_page is invalid",
  [429] = "too many requests", [500] = "internal server error",
}

local HUGE_FILLER = string.rep('{"a":1},', 8192) -- 64 KiB
local HUGE_FIRST = PAGE_START .. HUGE_FILLER

------------------------------------------------------------------------------
-- Control API
------------------------------------------------------------------------------

local OK = '{"ok":true}'

local function bad_request(message)
  return 400, '{"ok":false,"error":' .. jstr(message) .. "}"
end

local function decode_object(body)
  local ok, value = pcall(cjson.decode, body)
  if not ok or type(value) ~= "table" or value[1] ~= nil or not body:match("^%s*{") then
    return nil
  end
  return value
end

local function count_check(v)
  local n = as_integer(v)
  return n and n >= 0 and n <= MAX_ARRIVE and n or nil
end

local function page_check(v)
  local n = as_integer(v)
  return n and n >= 1 and n or nil
end

local function ms_check(v)
  local ms = as_number(v)
  return ms and ms >= 0 and ms or nil
end

-- The keys of /_control/config: a check that returns the value (nil: rejected) and what the
-- 400 says the value must be. burst_page and burst_calls go together, as do slow_page and slow_ms.
local COUNT_TEXT = "an integer from 0 to " .. MAX_ARRIVE
local CONFIG_KEYS = {
  latency_ms = { ms_check, "a number >= 0" },
  arrivals_per_request = { count_check, COUNT_TEXT },
  burst_page = { page_check, "an integer >= 1" },
  burst_calls = { count_check, COUNT_TEXT },
  slow_page = { page_check, "an integer >= 1" },
  slow_ms = { ms_check, "a number >= 0" },
}
local CONFIG_ORDER = { "latency_ms", "arrivals_per_request", "burst_page", "burst_calls", "slow_page", "slow_ms" }

M.jstr, M.jint, M.error_body = jstr, jint, error_body
M.IST_OFFSET, M.days_from_civil, M.format_ist, M.parse_bound = IST_OFFSET, days_from_civil, format_ist, parse_bound
M.new_rng, M.uuid4, M.generate = new_rng, uuid4, generate
M.unescape, M.parse_query, M.parse_status_list, M.FILTERS = unescape, parse_query, parse_status_list, FILTERS
M.response_head, M.build_response, M.check_action = response_head, build_response, check_action
M.MAX_PER_PAGE, M.MAX_ARRIVE = MAX_PER_PAGE, MAX_ARRIVE

------------------------------------------------------------------------------
-- A server: its data set, its state, the API and the control API over its connections
------------------------------------------------------------------------------

--- A server for `opts` (as parse_args gives them; a missing key takes parse_args' default). The
--- data set is made here; nothing is bound until app.run(). Returns `app`, whose functions are
--- the server's parts, for the specs: api_check, api_result, api_response, page_body, arrive,
--- listing_text, render_stats, control (a control request, without a connection) and run.
function M.new(given)
  local opts = assert(M.parse_args {})
  for k, v in pairs(given or {}) do opts[k] = v end

  -- The newest call of the data set, in epoch seconds (the others are older).
  local NEWEST = opts.now or os.time()

  local CALL_COUNT = opts.calls
  local FIELDS, CALLS_TEXT, CALL_FROM, CALL_TO = generate(CALL_COUNT, opts.seed, NEWEST)
  collectgarbage("collect") -- drop the start-up garbage now rather than while serving

  ------------------------------------------------------------------------------
  -- Calls that arrive while the server runs (see arrive below)
  ------------------------------------------------------------------------------

  -- Arrived calls are kept apart from the data set, in the order they arrived (the last one is
  -- the newest): the listing is they, newest first, then the data set. With none, nothing in
  -- the way pages are built or cached changes.

  local arrived -- { n, json = {}, ids = {}, fields = columns, newest = epoch s, rng }
  local known_ids -- set of every call_id, built at the first arrival

  -- Back to the data set alone; the next calls to arrive are the same as after start-up.
  local function drop_arrivals()
    if arrived and known_ids then
      for _, id in ipairs(arrived.ids) do known_ids[id] = nil end
    end
    arrived = { n = 0, json = {}, ids = {}, fields = new_fields(), newest = NEWEST,
                rng = new_rng(opts.seed + ARRIVAL_SEED_OFFSET) }
  end
  drop_arrivals()

  -- Draws one more call, newer than every call so far, with an id no call has.
  local function draw_arrival()
    local rng, n = arrived.rng, arrived.n + 1
    if not known_ids then
      known_ids = {}
      for id in CALLS_TEXT:gmatch('"call_id":"([^"]*)"') do known_ids[id] = true end
    end
    local id = uuid4(rng)
    while known_ids[id] do id = uuid4(rng) end
    known_ids[id] = true
    local created = arrived.newest + rand(rng, 1, 600)
    local agent = pick(rng, AGENTS)
    local inbound = rng() % 100 < 20
    local status = rng() % 5 == 0 and "in_progress" or pick(rng, inbound and INBOUND_STATUS or OUTBOUND_STATUS)
    local phone
    local earlier = CALL_COUNT + n - 1
    if earlier > 0 and rng() % 4 == 0 then
      local k = rand(rng, 1, earlier)
      phone = k <= CALL_COUNT and FIELDS.phone_number[k] or arrived.fields.phone_number[k - CALL_COUNT]
    else
      phone = string.format("+91%d%09d", rand(rng, 6, 9), rng() % 1000000000)
    end
    arrived.json[n] = finish_call(rng, arrived.fields, n, id, agent, inbound, status, phone, created)
    arrived.ids[n], arrived.n, arrived.newest = id, n, created
  end
  local filter_cache, filter_cache_size = {}, 0

  -- The indices of the calls passing every { row, value } in `active`, cached per combination.
  local function matching(active)
    local parts = {}
    for i, f in ipairs(active) do
      local text = f[1].key(f[2])
      parts[i] = string.format("%s=%d:%s", f[1].name, #text, text) -- length-prefixed: unambiguous
    end
    local key = table.concat(parts, "&")
    local list = filter_cache[key]
    if list then return list end
    local columns = {}
    for j, f in ipairs(active) do columns[j] = FIELDS[f[1].field] end
    list = {}
    local n = 0
    for i = 1, CALL_COUNT do
      local ok = true
      for j, f in ipairs(active) do
        if not f[1].test(columns[j][i], f[2]) then ok = false; break end
      end
      if ok then n = n + 1; list[n] = i end
    end
    if filter_cache_size + n > FILTER_CACHE_LIMIT then filter_cache, filter_cache_size = {}, 0 end
    filter_cache[key], filter_cache_size = list, filter_cache_size + n
    return list
  end

  -- The arrived calls passing the filters, newest first (indices into arrived.json). They are few
  -- and change at every arrival, so they are not cached.
  local function matching_arrived(active)
    local list, n = {}, 0
    for i = arrived.n, 1, -1 do
      if passes(active, arrived.fields, i) then n = n + 1; list[n] = i end
    end
    return list
  end

  ------------------------------------------------------------------------------
  -- The API itself
  ------------------------------------------------------------------------------

  -- Checks an API request. Returns { status = 200, list = matching call indices, page, per_page }
  -- or an error answer { status, body, headers }.
  local function api_check(req)
    if req.path ~= "/v1/calls" then return failure(404, { "not found" }) end
    if req.method ~= "GET" then return failure(405, { "method not allowed" }, { { "Allow", "GET" } }) end
    if req.headers["api-token"] ~= opts.token then
      return failure(401, { "invalid or missing API-Token" })
    end
    local params = parse_query(req.query)
    local active, errors = {}, {}
    for _, row in ipairs(FILTERS) do
      local text = params[row.name]
      if text then
        local value = row.parse(text)
        if value == nil then errors[#errors + 1] = row.name .. " is invalid"
        else active[#active + 1] = { row, value } end
      end
    end
    local page, per_page = 1, 25
    if params.page then
      page = parse_positive(params.page)
      if not page then errors[#errors + 1] = "page is invalid" end
    end
    if params.per_page then
      per_page = parse_positive(params.per_page)
      if not per_page then errors[#errors + 1] = "per_page is invalid" end
    end
    if #errors > 0 then return failure(422, errors) end
    if params.agent_uuid and not AGENT_BY_UUID[params.agent_uuid] then
      return failure(404, { "agent not found" })
    end
    return { status = 200, list = matching(active), page = page,
             per_page = math.min(per_page, MAX_PER_PAGE),
             arrived = arrived.n > 0 and matching_arrived(active) or nil }
  end

  local runs = {} -- reused by page_body

  -- The two parts of a page's body after PAGE_START: the calls' JSON, and the meta that closes
  -- it. Callers join them in one `..` expression, which allocates the result once: on a cold
  -- page, fresh memory (page faults) costs more than anything else. `alist`, when calls have
  -- arrived, lists those that pass the filters (newest first): they come before `list`.
  local function page_body(list, page, per_page, alist)
    local na = alist and #alist or 0
    local total = na + #list
    local pages = (total + per_page - 1) // per_page
    local data = ""
    if page <= pages then -- also keeps (page - 1) * per_page from overflowing on absurd pages
      local first = (page - 1) * per_page + 1
      local last = math.min(first + per_page - 1, total)
      local n, k = 0, first
      while k <= na and k <= last do -- arrived calls: listing positions 1..na
        n = n + 1
        runs[n] = arrived.json[alist[k]]
        k = k + 1
      end
      k, last = k - na, last - na -- the rest are positions in `list`
      while k <= last do
        -- a run of consecutive calls is one piece of CALLS_TEXT, commas included
        local run_end = k
        while run_end < last and list[run_end + 1] == list[run_end] + 1 do run_end = run_end + 1 end
        n = n + 1
        runs[n] = CALLS_TEXT:sub(CALL_FROM[list[k]], CALL_TO[list[run_end]])
        k = run_end + 1
      end
      data = n == 1 and runs[1] or table.concat(runs, ",", 1, n)
    end
    return data, string.format(
      '],"meta":{"current_page":%d,"total_pages":%d,"total_count":%d,"per_page":%d}}',
      page, pages, total, per_page)
  end

  -- Status, body and extra headers of the normal answer to an API request.
  local function api_result(req)
    local r = api_check(req)
    if r.status ~= 200 then return r.status, r.body, r.headers end
    local data, meta = page_body(r.list, r.page, r.per_page, r.arrived)
    return 200, PAGE_START .. data .. meta
  end

  -- Whole 200 responses, by keep-alive flag and then by the raw query string (a finer key than
  -- the normalised query, and one that needs no parsing on a hit). Bounded by total size.
  local RESPONSE_CACHE_LIMIT = 64 * 1024 * 1024
  local response_cache, response_cache_size = { [true] = {}, [false] = {} }, 0

  -- Status and complete response text of the normal answer to an API request.
  local function api_response(req, keep)
    if req.path == "/v1/calls" and req.method == "GET" and req.headers["api-token"] == opts.token then
      local hit = response_cache[keep][req.query]
      if hit then return 200, hit end
    end
    local r = api_check(req)
    if r.status ~= 200 then return r.status, build_response(r.status, r.body, keep, JSON_TYPE, r.headers) end
    local data, meta = page_body(r.list, r.page, r.per_page, r.arrived)
    local head = response_head(200, #PAGE_START + #data + #meta, keep, JSON_TYPE)
    local response = head .. PAGE_START .. data .. meta
    if response_cache_size + #response > RESPONSE_CACHE_LIMIT then
      response_cache, response_cache_size = { [true] = {}, [false] = {} }, 0
    end
    response_cache[keep][req.query] = response
    response_cache_size = response_cache_size + #response
    return 200, response
  end

  -- k calls arrive now, at the top of the listing; the cached responses are then out of date.
  local function arrive(k)
    if k <= 0 then return end
    for _ = 1, k do draw_arrival() end
    response_cache, response_cache_size = { [true] = {}, [false] = {} }, 0
  end

  -- Back to the data set as it was at start-up, dropping every arrived call.
  local function reset_arrivals()
    if arrived.n == 0 then return end
    drop_arrivals()
    response_cache, response_cache_size = { [true] = {}, [false] = {} }, 0
  end

  -- Calls that end (/_control/update): the k oldest calls still in_progress become picked.
  -- The data set's text is rebuilt once per update (offsets moved); the first update keeps the
  -- data set as started, for reset. Returns how many calls were updated.
  local original -- { text, from, to, status = { [i] = status } } before the first update
  local function end_calls(k)
    local function ended(json, i)
      local d = 30 + (i * 7919) % 150
      json = json:gsub('"status":"in_progress"', '"status":"picked"', 1)
      return (json:gsub('"duration_seconds":0,"call_ended_by":null,"call_ended_reason":null', string.format(
        '"duration_seconds":%d,"call_ended_by":"customer","call_ended_reason":"customer-ended-call"', d), 1))
    end
    local done, changed = 0, {}
    for i = CALL_COUNT, 1, -1 do
      if done >= k then break end
      if FIELDS.status[i] == "in_progress" then
        if not original then
          original = { text = CALLS_TEXT, from = {}, to = {}, status = {} }
          for j = 1, CALL_COUNT do original.from[j], original.to[j] = CALL_FROM[j], CALL_TO[j] end
        end
        original.status[i] = original.status[i] or FIELDS.status[i]
        changed[i] = ended(CALLS_TEXT:sub(CALL_FROM[i], CALL_TO[i]), i)
        FIELDS.status[i] = "picked"
        done = done + 1
      end
    end
    if next(changed) then -- the text again, each changed call in its place
      local parts, pos, shift = {}, 1, 0
      for i = 1, CALL_COUNT do
        local from, to = CALL_FROM[i], CALL_TO[i]
        CALL_FROM[i] = from + shift
        if changed[i] then
          parts[#parts + 1] = CALLS_TEXT:sub(pos, from - 1)
          parts[#parts + 1] = changed[i]
          pos = to + 1
          shift = shift + #changed[i] - (to - from + 1)
        end
        CALL_TO[i] = to + shift
      end
      parts[#parts + 1] = CALLS_TEXT:sub(pos)
      CALLS_TEXT = table.concat(parts)
    end
    for i = 1, arrived.n do
      if done >= k then break end
      if arrived.fields.status[i] == "in_progress" then
        arrived.json[i] = ended(arrived.json[i], CALL_COUNT + i)
        arrived.fields.status[i] = "picked"
        done = done + 1
      end
    end
    if done > 0 then
      response_cache, response_cache_size = { [true] = {}, [false] = {} }, 0
      filter_cache, filter_cache_size = {}, 0
    end
    return done
  end

  -- The data set as started, before any update.
  local function undo_updates()
    if not original then return end
    CALLS_TEXT, CALL_FROM, CALL_TO = original.text, original.from, original.to
    for i, status in pairs(original.status) do FIELDS.status[i] = status end
    original = nil
    response_cache, response_cache_size = { [true] = {}, [false] = {} }, 0
    filter_cache, filter_cache_size = {}, 0
  end

  -- The whole listing (arrived calls, then the data set), as /_control/calls sends it.
  local function listing_text()
    if arrived.n == 0 then return CALLS_TEXT end
    local parts = {}
    for i = arrived.n, 1, -1 do parts[#parts + 1] = arrived.json[i] end
    if CALL_COUNT > 0 then parts[#parts + 1] = CALLS_TEXT end
    return table.concat(parts, ",")
  end

  ------------------------------------------------------------------------------
  -- Scheduler: one coroutine per connection, socket.select for readiness, timed sleeps
  ------------------------------------------------------------------------------

  -- A set of sockets waited on, as the array socket.select wants plus the waiting coroutine.
  local function new_waitset()
    return { list = {}, pos = {}, co = {} }
  end

  local function waitset_add(set, sock, co)
    local n = #set.list + 1
    set.list[n], set.pos[sock], set.co[sock] = sock, n, co
  end

  local function waitset_take(set, sock)
    local i = set.pos[sock]
    if not i then return nil end
    local list = set.list
    local last = list[#list]
    list[i], set.pos[last] = last, i -- move the last socket into the hole
    list[#list] = nil
    set.pos[sock] = nil
    local co = set.co[sock]
    set.co[sock] = nil
    return co
  end

  local readers, writers = new_waitset(), new_waitset()
  local sleepers = {} -- { at = time, co = coroutine }
  local running = true

  local function wait_readable(sock)
    waitset_add(readers, sock, coroutine.running())
    coroutine.yield()
  end

  local function wait_writable(sock)
    waitset_add(writers, sock, coroutine.running())
    coroutine.yield()
  end

  -- Sleep without blocking other connections; sleep(0) just lets the others run.
  local function sleep(seconds)
    sleepers[#sleepers + 1] = { at = socket.gettime() + seconds, co = coroutine.running() }
    coroutine.yield()
  end

  local function resume(co)
    local ok, err = coroutine.resume(co)
    if not ok then io.stderr:write("osvi-server: ", tostring(err), "\n") end
  end

  local function wake_sleepers()
    local now, due, i = socket.gettime(), {}, 1
    while i <= #sleepers do
      local s = sleepers[i]
      if s.at <= now then
        due[#due + 1] = s
        sleepers[i] = sleepers[#sleepers]
        sleepers[#sleepers] = nil
      else
        i = i + 1
      end
    end
    table.sort(due, function(a, b) return a.at < b.at end)
    for _, s in ipairs(due) do resume(s.co) end
  end

  -- At most this long between checks that the process that started the server
  -- is still there (see parent_gone), and so between two turns of the loop in run.
  local WATCH_INTERVAL = 1

  local function select_timeout()
    local soonest = math.huge
    for _, s in ipairs(sleepers) do soonest = math.min(soonest, s.at) end
    return math.min(WATCH_INTERVAL, math.max(0, soonest - socket.gettime()))
  end

  -- The parent pid (field 4 of /proc/self/stat).
  local function parent_pid()
    local f = io.open("/proc/self/stat")
    if not f then return nil end
    local stat = f:read("a")
    f:close()
    -- the command name (field 2) is in parentheses and may hold spaces
    return tonumber(stat:match("%) %S+ (%d+)"))
  end

  -- With exit_with_parent (--exit-with-parent), a server whose parent died (a spec run that
  -- crashed or was killed) exits instead of living on and holding the parent's output pipes
  -- open. Without it the server stays until it is stopped: `nohup ... &` in a script that then
  -- exits leaves it serving.
  local started_by = opts.exit_with_parent and parent_pid() or nil
  local function parent_gone()
    return started_by ~= nil and parent_pid() ~= started_by
  end

  ------------------------------------------------------------------------------
  -- Connection I/O (inside a connection's coroutine)
  ------------------------------------------------------------------------------

  local RECV_SIZE = 65536
  local MAX_HEAD, MAX_BODY = 64 * 1024, 1024 * 1024

  -- LuaSocket's send() writes in steps of 8 KiB: with TCP_NODELAY each step would leave as a
  -- segment of its own and wake the reader. Longer strings are sent with Nagle on, and turning
  -- TCP_NODELAY back on at the end pushes out what is still queued (Linux does so at once).
  local SEND_STEP = 8192

  -- Sends all of `data`, waiting for writability on partial sends. False if the peer is gone.
  local function send_all(sock, data)
    local corked = #data > SEND_STEP
    if corked then sock:setoption("tcp-nodelay", false) end
    local i, ok = 1, nil
    while ok == nil do
      local last, err, partial = sock:send(data, i)
      if last then
        ok = true
      elseif err ~= "timeout" then
        ok = false
      else
        i = partial + 1
        wait_writable(sock)
      end
    end
    if corked then sock:setoption("tcp-nodelay", true) end
    return ok
  end

  -- Appends to conn.buf what the peer has sent, waiting until something arrives.
  -- False at end of stream or on error. It waits before reading: it is only called once what
  -- was received has been used up, when reading at once would nearly always come back empty.
  -- (socket.select also reports sockets with data in LuaSocket's own buffer as readable.)
  local function fill(conn)
    while true do
      wait_readable(conn.sock)
      local data, err, partial = conn.sock:receive(RECV_SIZE)
      local chunk = data or partial
      if chunk and chunk ~= "" then
        conn.buf = conn.buf .. chunk
        return true
      end
      if err ~= "timeout" then return false end
    end
  end

  -- The next request on the connection: { method, path, query, headers, keep, body }.
  -- Returns nil when the peer closed, or nil and a status to answer a malformed request with.
  local function read_request(conn)
    local head_end
    while true do
      head_end = conn.buf:find("\r\n\r\n", 1, true)
      if head_end then break end
      if #conn.buf > MAX_HEAD then return nil, 431 end
      if not fill(conn) then return nil end
    end
    local head = conn.buf:sub(1, head_end - 1)
    conn.buf = conn.buf:sub(head_end + 4)

    local method, target, version = head:match("^(%u+) (%S+) HTTP/(%d%.%d)")
    if not method then return nil, 400 end
    local headers = {}
    for line in head:gmatch("\r\n([^\r\n]*)") do
      local name, value = line:match("^([^:%s]+):%s*(.-)%s*$")
      if not name then return nil, 400 end
      name = name:lower()
      headers[name] = headers[name] and headers[name] .. ", " .. value or value
    end
    local path, query = target:match("^([^?]*)%??(.*)$")
    local connection = (headers.connection or ""):lower()
    local keep
    if version == "1.0" then
      keep = connection:find("keep-alive", 1, true) ~= nil
    else
      keep = connection:find("close", 1, true) == nil
    end

    if headers["transfer-encoding"] then return nil, 501 end -- request bodies: Content-Length only
    local body, length = "", headers["content-length"]
    if length then
      length = parse_integer(length)
      if not length or length < 0 then return nil, 400 end
      if length > MAX_BODY then return nil, 413 end
      if #conn.buf < length and (headers.expect or ""):lower() == "100-continue" then
        send_all(conn.sock, "HTTP/1.1 100 Continue\r\n\r\n")
      end
      while #conn.buf < length do
        if not fill(conn) then return nil end
      end
      body, conn.buf = conn.buf:sub(1, length), conn.buf:sub(length + 1)
    end
    return { method = method, path = path, query = query, headers = headers, keep = keep, body = body }
  end

  ------------------------------------------------------------------------------
  -- Counters, request log and fault script
  ------------------------------------------------------------------------------

  local LOG_MAX = 1000

  local state = {
    requests = 0,         -- API requests since the last reset
    connections = 0,      -- connections that carried an API request since the last reset
    open_connections = 0, -- open connections that have carried an API request
    inflight = 0,         -- API requests being answered now
    max_inflight = 0,     -- the most answered at once since the last reset
    epoch = 1,            -- bumped by each reset, so connections count again after it
    log = {},             -- ring buffer of the last LOG_MAX API requests
    logged = 0,           -- API requests logged since the last reset
    script = {},          -- pending fault actions, each with `left` uses
    page_script = {},     -- pending fault actions for one page each (`page`), in order
    latency = opts.latency_ms / 1000,
    per_request = 0,      -- calls arriving before each /v1/calls request is answered
    burst_page = nil,     -- the first request for this page ...
    burst_calls = 0,      -- ... has this many calls arrive first (then burst_page is cleared)
    slow_page = nil,      -- every request for this page ...
    slow = 0,             -- ... sleeps this long (seconds) before its answer is made
  }

  local function reset_state()
    state.requests, state.connections, state.epoch = 0, 0, state.epoch + 1
    state.log, state.logged, state.script, state.page_script = {}, 0, {}, {}
    state.max_inflight = state.inflight
    state.latency = opts.latency_ms / 1000
    state.per_request, state.burst_page, state.burst_calls = 0, nil, 0
    state.slow_page, state.slow = nil, 0
    reset_arrivals()
    undo_updates()
  end

  -- Counts and logs an API request; the returned log entry gets its status and fault later.
  local function record(conn, req)
    state.requests = state.requests + 1
    if conn.epoch ~= state.epoch then
      conn.epoch = state.epoch
      state.connections = state.connections + 1
    end
    if not conn.api then
      conn.api = true
      state.open_connections = state.open_connections + 1
    end
    local entry = { method = req.method, path = req.path, query = req.query,
                    connection = conn.id, headers = req.headers }
    state.logged = state.logged + 1
    state.log[(state.logged - 1) % LOG_MAX + 1] = entry
    return entry
  end

  -- Takes one use of the action at `list[i]`, if any, and returns it.
  local function take_action(list, i)
    local action = list[i]
    if not action then return nil end
    action.left = action.left - 1
    if action.left == 0 then table.remove(list, i) end
    return action
  end

  -- The action for the next API request: the first pending one for its page (nil: the page
  -- does not matter or is not known), else the next one of the script.
  local function next_action(page)
    if page then
      for i, action in ipairs(state.page_script) do
        if action.page == page then return take_action(state.page_script, i) end
      end
    end
    if state.script[1] == nil then return nil end -- the usual case, kept short
    return take_action(state.script, 1)
  end

  local function render_stats()
    local entries = {}
    for k = math.max(1, state.logged - LOG_MAX + 1), state.logged do
      local e = state.log[(k - 1) % LOG_MAX + 1]
      local names, headers = {}, {}
      for name in pairs(e.headers) do names[#names + 1] = name end
      table.sort(names)
      for i, name in ipairs(names) do headers[i] = jstr(name) .. ":" .. jstr(e.headers[name]) end
      entries[#entries + 1] = string.format(
        '{"method":%s,"path":%s,"query":%s,"connection":%d,"headers":{%s},"status":%s,"fault":%s,'
          .. '"sent":%s}',
        jstr(e.method), jstr(e.path), jstr(e.query), e.connection, table.concat(headers, ","),
        jint(e.status), jstr(e.fault), e.sent and string.format("%.6f", e.sent) or "null")
    end
    return string.format('{"requests":%d,"connections":%d,"open_connections":%d,'
      .. '"max_inflight":%d,"inflight":%d,"arrived":%d,"log":[%s]}', state.requests, state.connections,
      state.open_connections, state.max_inflight, state.inflight, arrived.n, table.concat(entries, ","))
  end

  ------------------------------------------------------------------------------
  -- Fault script: execution. Each runner answers (or not) and returns true to keep the
  -- connection open for the next request.
  ------------------------------------------------------------------------------

  -- The normal answer, sent whole.
  local function answer(conn, req, entry, keep)
    local status, response = api_response(req, keep)
    entry.status = status
    return send_all(conn.sock, response) and keep
  end

  local RUN = {}

  function RUN.pass(conn, req, entry)
    return answer(conn, req, entry, req.keep)
  end
  RUN.arrive = RUN.pass

  function RUN.delay(conn, req, entry, action)
    sleep(action.delay)
    return answer(conn, req, entry, req.keep)
  end

  function RUN.close_after(conn, req, entry)
    answer(conn, req, entry, false)
    return false
  end

  function RUN.reset(conn)
    -- linger 0: close() sends a RST instead of a FIN
    conn.sock:setoption("linger", { on = true, timeout = 0 })
    return false
  end

  function RUN.empty()
    return false
  end

  function RUN.truncate(conn, req, entry)
    local status, response = api_response(req, req.keep)
    entry.status = status
    local head_end = response:find("\r\n\r\n", 1, true) + 3
    send_all(conn.sock, response:sub(1, head_end + (#response - head_end) // 2))
    return false
  end

  function RUN.drip(conn, req, entry, action)
    local status, response = api_response(req, req.keep)
    entry.status = status
    for k = 1, #response do
      if k > 1 then sleep(action.interval) end
      if not send_all(conn.sock, response:sub(k, k)) then return false end
    end
    return req.keep
  end

  function RUN.redirect(conn, req, entry, action)
    entry.status = action.status
    local response = build_response(action.status, "", req.keep, nil, { { "Location", action.location } })
    return send_all(conn.sock, response) and req.keep
  end

  -- A 200 whose body is `{"success":true,"data":[` and filler, `bytes` long (-1: endless,
  -- chunked only), sent in 64 KiB pieces without ever holding the whole body.
  function RUN.huge(conn, req, entry, action)
    entry.status = 200
    local out = "HTTP/1.1 200 OK\r\nContent-Type: " .. JSON_TYPE .. "\r\n"
      .. (action.chunked and "Transfer-Encoding: chunked\r\n" or "Content-Length: " .. action.bytes .. "\r\n")
      .. (req.keep and "Connection: keep-alive" or "Connection: close") .. "\r\n\r\n"
    local left, piece = action.bytes, HUGE_FIRST
    while left ~= 0 do
      if left > 0 then
        if #piece > left then piece = piece:sub(1, left) end
        left = left - #piece
      end
      if action.chunked then
        out = out .. string.format("%x\r\n", #piece) .. piece .. "\r\n"
      else
        out = out .. piece
      end
      if not send_all(conn.sock, out) then return false end
      out, piece = "", HUGE_FILLER
      sleep(0) -- a fast reader would otherwise keep this loop from ever yielding
    end
    if action.chunked then out = out .. "0\r\n\r\n" end
    if out ~= "" and not send_all(conn.sock, out) then return false end
    return req.keep
  end

  function RUN.status(conn, req, entry, action)
    local status, body = action.status, action.body
    if body == nil then
      if status == 200 then
        status, body = api_result(req) -- the normal answer, with the scripted headers added
      elseif status >= 400 then
        body = error_body(action.errors or { DEFAULT_ERRORS[status] or reason(status):lower() })
      else
        body = ""
      end
    end
    local content_type = action.content_type or (body ~= "" and JSON_TYPE or nil)
    entry.status = status
    local response = build_response(status, body, req.keep, content_type, action.headers)
    return send_all(conn.sock, response) and req.keep
  end

  -- The page a /v1/calls request asks for (1 without a page parameter), or nil: another path,
  -- or a page parameter that is not a page number (the request gets its 422).
  local function page_of(req)
    if req.path ~= "/v1/calls" then return nil end
    local text = parse_query(req.query).page
    if text == nil then return 1 end
    return parse_positive(text)
  end

  local function handle_api(conn, req)
    local entry, epoch = record(conn, req), state.epoch
    state.inflight = state.inflight + 1
    state.max_inflight = math.max(state.max_inflight, state.inflight)
    -- the query is parsed here only when some knob looks at the page
    local page
    if state.slow_page or state.burst_page or state.page_script[1] then page = page_of(req) end
    local action = next_action(page)
    entry.fault = action and action.fault
    local calls = action and action.arrive or 0
    if page and page == state.burst_page then
      calls, state.burst_page = calls + state.burst_calls, nil -- the first request only
    end
    if state.per_request > 0 and req.path == "/v1/calls" then calls = calls + state.per_request end
    if state.latency > 0 then sleep(state.latency) end
    if page and page == state.slow_page and state.slow > 0 then sleep(state.slow) end
    -- after the sleeps, so the answer is made from the listing as it is now; not if a reset
    -- came meanwhile (the calls were meant for the listing before it)
    if calls > 0 and state.epoch == epoch then arrive(calls) end
    local keep
    entry.sent = socket.gettime() -- the answer is made and sent now (epoch seconds)
    if action then keep = RUN[action.kind](conn, req, entry, action)
    else keep = answer(conn, req, entry, req.keep) end
    state.inflight = state.inflight - 1
    return keep
  end

  -- path -> method -> handler(req) returning status and body
  -- The K of a body {"calls": K} (/_control/arrive and /_control/update), or
  -- nil and the 400 answer.
  local function calls_of(req)
    local body = decode_object(req.body)
    if not body then return nil, bad_request("body must be a JSON object") end
    for k in pairs(body) do
      if k ~= "calls" then return nil, bad_request("unknown key " .. tostring(k)) end
    end
    local k = as_integer(body.calls)
    if not k or k < 0 or k > MAX_ARRIVE then
      return nil, bad_request("calls must be an integer from 0 to " .. MAX_ARRIVE)
    end
    return k
  end

  local CONTROL = {
    ["/_control/stats"] = { GET = function() return 200, render_stats() end },
    ["/_control/calls"] = { GET = function()
      return 200, '{"data":[' .. listing_text() .. "]}"
    end },
    ["/_control/reset"] = { POST = function()
      reset_state()
      return 200, OK
    end },
    ["/_control/config"] = { POST = function(req)
      local config = decode_object(req.body)
      if not config then return bad_request("body must be a JSON object") end
      for k in pairs(config) do
        if not CONFIG_KEYS[k] then return bad_request("unknown key " .. tostring(k)) end
      end
      -- everything is checked before anything is set: a 400 changes nothing
      local checked = {}
      for _, k in ipairs(CONFIG_ORDER) do
        if config[k] ~= nil then
          local value = CONFIG_KEYS[k][1](config[k])
          if value == nil then return bad_request(k .. " must be " .. CONFIG_KEYS[k][2]) end
          checked[k] = value
        end
      end
      for _, pair in ipairs { { "burst_page", "burst_calls" }, { "slow_page", "slow_ms" } } do
        if (checked[pair[1]] == nil) ~= (checked[pair[2]] == nil) then
          return bad_request(pair[1] .. " and " .. pair[2] .. " go together")
        end
      end
      if checked.latency_ms then state.latency = checked.latency_ms / 1000 end
      if checked.arrivals_per_request then state.per_request = checked.arrivals_per_request end
      if checked.burst_page then state.burst_page, state.burst_calls = checked.burst_page, checked.burst_calls end
      if checked.slow_page then state.slow_page, state.slow = checked.slow_page, checked.slow_ms / 1000 end
      return 200, OK
    end },
    ["/_control/arrive"] = { POST = function(req)
      local k, status, err = calls_of(req)
      if not k then return status, err end
      arrive(k)
      return 200, string.format('{"ok":true,"arrived":%d}', arrived.n)
    end },
    ["/_control/update"] = { POST = function(req)
      local k, status, err = calls_of(req)
      if not k then return status, err end
      return 200, string.format('{"ok":true,"updated":%d}', end_calls(k))
    end },
    ["/_control/script"] = { POST = function(req)
      local ok, raw = pcall(cjson.decode, req.body)
      -- an empty object is taken for an empty array: that is how cjson encodes an empty table
      if not ok or type(raw) ~= "table" or not (req.body:match("^%s*%[") or next(raw) == nil) then
        return bad_request("body must be a JSON array of actions")
      end
      local script, page_script = {}, {}
      for i, item in ipairs(raw) do
        local action, err = check_action(item)
        if not action then return bad_request("action " .. i .. ": " .. err) end
        local list = action.page and page_script or script
        list[#list + 1] = action
      end
      state.script, state.page_script = script, page_script
      return 200, OK
    end },
    ["/_control/shutdown"] = { POST = function()
      running = false
      return 200, OK
    end },
  }

  -- The status, body and extra headers of the answer to a control request.
  local function control(req)
    local route = CONTROL[req.path]
    if not route then
      return 404, error_body({ "not found" })
    elseif not route[req.method] then
      local allowed = {}
      for method in pairs(route) do allowed[#allowed + 1] = method end
      return 405, error_body({ "method not allowed" }), { { "Allow", table.concat(allowed, ", ") } }
    end
    return route[req.method](req)
  end

  local function handle_control(conn, req)
    local status, body, extra = control(req)
    local keep = req.keep and running
    return send_all(conn.sock, build_response(status, body, keep, JSON_TYPE, extra)) and keep
  end

  ------------------------------------------------------------------------------
  -- Connections
  ------------------------------------------------------------------------------

  local function serve(conn)
    while true do
      local req, status = read_request(conn)
      if not req then
        if status then
          send_all(conn.sock, build_response(status, error_body({ reason(status):lower() }), false, JSON_TYPE))
        end
        return
      end
      local keep
      if req.path:sub(1, 10) == "/_control/" then
        keep = handle_control(conn, req)
      else
        keep = handle_api(conn, req)
      end
      if not keep then return end
    end
  end

  local function close_connection(conn)
    conn.sock:close()
    if conn.api then state.open_connections = state.open_connections - 1 end
  end

  local connection_count = 0

  local function accept_all(server)
    while true do
      local sock = server:accept()
      if not sock then return end
      sock:settimeout(0)
      sock:setoption("tcp-nodelay", true)
      connection_count = connection_count + 1
      local conn = { id = connection_count, sock = sock, buf = "" }
      -- The coroutine starts by waiting for its first request (see fill), so a FIN that
      -- arrived before this connection is processed first: open_connections is current when
      -- a stats request follows a client's close.
      resume(coroutine.create(function()
        local ok, err = xpcall(serve, debug.traceback, conn)
        if not ok then io.stderr:write("osvi-server: connection ", conn.id, ": ", err, "\n") end
        close_connection(conn)
      end))
    end
  end

  ------------------------------------------------------------------------------
  -- Listening
  ------------------------------------------------------------------------------

  -- Binds, prints "osvi-server listening on http://HOST:PORT pid=PID" on stdout, and serves until
  -- /_control/shutdown (or, with exit_with_parent, until its parent is gone).
  local function run()
    -- socket.tcp() makes a socket of no family yet: LuaSocket opens it at bind, for the family of
    -- the address, so an option set before that fails (and returns nil, which went unseen). The
    -- family is chosen here, so that SO_REUSEADDR is set before bind: a server restarted at once
    -- on the port of one that was stopped while clients kept connections alive binds it again.
    local server = assert(opts.host:find(":", 1, true) and socket.tcp6() or socket.tcp4())
    assert(server:setoption("reuseaddr", true))
    local ok, err = server:bind(opts.host, opts.port)
    if not ok then
      io.stderr:write("osvi-server: cannot bind ", opts.host, ":", opts.port, ": ", err, "\n")
      os.exit(1)
    end
    assert(server:listen(1024))
    server:settimeout(0)
    local ip, port = server:getsockname()
    local stat = assert(io.open("/proc/self/stat"))
    local pid = stat:read("n")
    stat:close()
    io.stdout:write(string.format("osvi-server listening on http://%s:%d pid=%d\n", ip, port, pid))
    io.stdout:flush()

    local ACCEPT = "accept" -- marks the listening socket in the readers set
    waitset_add(readers, server, ACCEPT)
    local next_watch = socket.gettime() + WATCH_INTERVAL
    while running do
      if socket.gettime() >= next_watch then
        if parent_gone() then break end
        next_watch = socket.gettime() + WATCH_INTERVAL
      end
      local readable, writable = socket.select(readers.list, writers.list, select_timeout())
      for _, sock in ipairs(readable) do
        if readers.co[sock] == ACCEPT then
          accept_all(server)
        else
          local co = waitset_take(readers, sock)
          if co then resume(co) end
        end
      end
      for _, sock in ipairs(writable) do
        local co = waitset_take(writers, sock)
        if co then resume(co) end
      end
      if #sleepers > 0 then wake_sleepers() end
    end
    server:close()
  end

  return {
    opts = opts, newest = NEWEST, api_check = api_check, api_result = api_result,
    api_response = api_response, page_body = page_body, arrive = arrive, listing_text = listing_text,
    render_stats = render_stats, control = control, run = run,
  }
end

return M
