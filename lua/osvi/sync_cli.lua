--[[
osvi.sync_cli -- `osvi-calls sync`: keep a local copy of the calls in SQLite or PostgreSQL.

  osvi-calls sync [--db sqlite:FILE | --db postgres://...] [--status ...] ... [--overlap 2d]
                  [--dry-run] [--progress | --quiet]

bin/osvi-calls hands its arguments over when the first one is `sync`; the work is done by
osvi.sync (lua/osvi/sync.lua). Progress goes to stderr (when it is a terminal, or with
--progress), the one-line summary to stdout.

Exit status (as for the listing): 0 ok, 1 any failure (network, server, decode, database ...),
2 usage (a bad flag or filter value), 3 the token was refused (auth, forbidden), 130
interrupted. After a failure or an interruption the database is consistent, and the next run
goes on from where this one stopped.

Written for Lua 5.4, and kept to what Lua 5.1, 5.3 and LuaJIT also have.
]]

local M = {}

local PROG = "osvi-calls sync"
local EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_AUTH, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
local IST = 5 * 3600 + 30 * 60

-- One row per flag, in --help order (as bin/osvi-calls: filter, option or cli setting).
local FLAGS = {
  { "db", cli = "db", arg = "URL",
    help = "sqlite:FILE (default sqlite:osvi-calls.db) or postgres://[user[:password]@]host[:port]/dbname" },
  { "status", filter = "status", arg = "LIST",
    help = "picked, not_picked, failed, busy, voicemail, in_progress; comma-separated" },
  { "agent-uuid", filter = "agent_uuid", arg = "UUID", help = "calls handled by this agent (agent_...)" },
  { "campaign-id", filter = "campaign_id", arg = "N", help = "calls of this campaign" },
  { "campaign-upload-id", filter = "campaign_upload_id", arg = "N",
    help = "calls from one contact upload of a campaign" },
  { "phone-number", filter = "phone_number", arg = "DIGITS",
    help = "partial match on the other party's number (+ allowed)" },
  { "call-type", filter = "call_type", arg = "TYPE", help = "inbound or outbound" },
  { "start-date", filter = "start_date", arg = "WHEN", int = true,
    help = "from this IST day (YYYY-MM-DD), ISO-8601 timestamp or epoch seconds, inclusive" },
  { "end-date", filter = "end_date", arg = "WHEN", int = true,
    help = "up to this day, timestamp or epoch seconds, inclusive" },
  { "overlap", cli = "overlap", arg = "TIME",
    help = "read again the calls this much older than the last sync's newest (default 2d; s, m, h, d)" },
  { "per-page", cli = "per_page", arg = "N", help = "calls per request, 1..100 (default 100)" },
  { "dry-run", cli = "dry_run", help = "write nothing: say what would be read (one request)" },
  { "progress", cli = "progress", help = "show the progress line even when stderr is not a terminal" },
  { "quiet", short = "q", cli = "quiet", help = "no progress line" },
  { "prefetch", option = "prefetch", arg = "N", int = true, help = "pages requested ahead, 0..16 (default 4)" },
  { "retries", option = "max_retries", arg = "N", int = true,
    help = "extra attempts after a retryable failure, 0..10 (default 2)" },
  { "timeout", option = "timeout", arg = "SECONDS", number = true,
    help = "time limit of one request attempt (default 30)" },
  { "token", option = "token", arg = "TOKEN",
    help = "API token (default $OSVI_API_TOKEN; prefer the variable: argv is visible to ps)" },
  { "base-url", option = "base_url", arg = "URL",
    help = "API base URL (default $OSVI_BASE_URL or https://api.osvi.ai)" },
  { "help", short = "h", cli = "help", help = "show this help and exit" },
}

local FLAG_BY_NAME, FLAG_BY_SHORT, FLAG_BY_KEY = {}, {}, {}
for _, f in ipairs(FLAGS) do
  FLAG_BY_NAME[f[1]] = f
  if f.short then FLAG_BY_SHORT[f.short] = f end
  if f.filter or f.option then FLAG_BY_KEY[f.filter or f.option] = f[1] end
end

local function usage_text()
  local lines = {
    "usage: osvi-calls sync [flags]",
    "",
    "Keeps a local copy of the calls (those matching the filters) in SQLite or PostgreSQL:",
    "the first run reads them all, later runs read what is new and what may have changed.",
    "An interrupted run is finished by the next one. See the README, \"Keep a local copy\".",
    "",
    "flags:",
  }
  for _, f in ipairs(FLAGS) do
    local left = (f.short and "-" .. f.short .. ", " or "    ") .. "--" .. f[1] .. (f.arg and " " .. f.arg or "")
    lines[#lines + 1] = string.format("  %-30s %s", left, f.help)
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "The password of a postgres:// URL can also come from PGPASSWORD or ~/.pgpass."
  lines[#lines + 1] = ""
  lines[#lines + 1] = "exit status: 0 ok, 1 failure, 2 usage error or bad filter value,"
  lines[#lines + 1] = "             3 token refused (auth, forbidden), 130 interrupted"
  return table.concat(lines, "\n") .. "\n"
end

local CliError = {}
CliError.__index = CliError
CliError.__tostring = function(e) return e.message end
local function usage_error(fmt, ...)
  error(setmetatable({ message = string.format(fmt, ...) }, CliError), 0)
end

-- "2d", "36h", "90m", "600s", "600" -> seconds
local function duration(text)
  local n, unit = tostring(text):match("^(%d+%.?%d*)([smhd]?)$")
  n = tonumber(n)
  if not n then usage_error("--overlap: expected a time such as 2d, 36h, 90m or 600 (seconds), got '%s'", text) end
  local mult = ({ s = 1, m = 60, h = 3600, d = 86400 })[unit] or 1
  return math.floor(n * mult + 0.5)
end

local function parse_args(argv)
  local opts = { filters = {}, options = {} }
  local i = 1
  while i <= #argv do
    local word = argv[i]
    local name, value = word:match("^%-%-([^=]+)=(.*)$")
    if not name then name = word:match("^%-%-(.+)$") end
    local short = not name and word:match("^%-(%a)$")
    if not name and not short then
      usage_error("unexpected argument #%d (sync takes only flags; see osvi-calls sync --help)", i)
    end
    local flag = short and FLAG_BY_SHORT[short] or (name and FLAG_BY_NAME[name])
    if not flag then usage_error("unknown flag '%s'", short and "-" .. short or "--" .. name) end
    if flag.arg then
      if value == nil then
        i = i + 1
        value = argv[i]
        if value == nil or value:match("^%-%-") then usage_error("--%s needs a value (%s)", flag[1], flag.arg) end
      end
      if flag.int and value:match("^[+-]?%d+$") then
        value = tonumber(value) or value
      elseif flag.number then
        local n = tonumber(value)
        if not n then usage_error("--%s: expected a number", flag[1]) end
        value = n
      end
      if flag.filter then opts.filters[flag.filter] = value
      elseif flag.option then opts.options[flag.option] = value
      else opts[flag.cli] = value end
    else
      if value ~= nil then usage_error("--%s takes no value", flag[1]) end
      opts[flag.cli] = true
    end
    i = i + 1
  end
  if opts.overlap then opts.overlap = duration(opts.overlap) end
  if opts.per_page then
    local n = tonumber(opts.per_page)
    if not n or n ~= math.floor(n) or n < 1 or n > 100 then usage_error("--per-page: expected 1..100") end
    opts.per_page = math.floor(n)
    if math.tointeger then opts.per_page = math.tointeger(opts.per_page) end
  end
  return opts
end

local function is_terminal(fd)
  local r = os.execute("test -t " .. fd)
  return r == true or r == 0
end

local function clock(s)
  s = math.floor(s + 0.5)
  local h, m = math.floor(s / 3600), math.floor(s / 60) % 60
  if h > 0 then return string.format("%d:%02d:%02d", h, m, s % 60) end
  return string.format("%d:%02d", m, s % 60)
end

local function ist(t)
  return t and os.date("!%Y-%m-%dT%H:%M:%S+05:30", t + IST) or "?"
end

local function new_progress(enabled)
  if not enabled then return nil, function() end end
  local last, shown = -math.huge, false
  local sync = require "osvi.sync"
  local function update(p)
    local t = sync.now()
    if t - last < 0.2 and p.phase ~= "done" then return end
    last = t
    local rate = p.elapsed > 0 and p.calls / p.elapsed or 0
    io.stderr:write(string.format(
      "\rsync: %d pages  %d calls (%d new, %d updated, %d unchanged)  %.0f calls/s  ETA %s\27[K",
      p.pages, p.calls, p.new, p.updated, p.unchanged, rate, p.eta and clock(p.eta) or "?"))
    shown = true
  end
  local function clear()
    if shown then io.stderr:write("\r\27[K") end
    shown = false
  end
  return update, clear
end

local function run(argv)
  local opts = parse_args(argv)
  if opts.help then
    io.stdout:write(usage_text())
    return EXIT_OK
  end
  local sync = require "osvi.sync"
  local osvi = require "osvi"
  local db = opts.db or sync.DEFAULT_DB
  sync.parse_db(db) -- a usage error before any request
  local client = osvi.new(opts.options)
  local update, clear = new_progress(not opts.quiet and not opts.dry_run and (opts.progress or is_terminal(2)))
  local ok, result = pcall(sync.run, { db = db, client = client, filters = opts.filters, overlap = opts.overlap,
    per_page = opts.per_page, dry_run = opts.dry_run, progress = update })
  clear()
  client:close()
  if not ok then error(result, 0) end
  local where = sync.redact(db)
  if opts.dry_run then
    local p = result
    if p.first then
      io.stdout:write(string.format("dry run: %s: would read the whole listing, %d calls in about %d pages "
        .. "(%s; nothing written)\n", p.resume and "an interrupted first sync" or "first sync",
        p.calls, p.pages, where))
    else
      io.stdout:write(string.format("dry run: %s: about %d new calls; would read down to calls created before %s, "
        .. "about %d calls in %d pages, and check %d calls in progress (%s; nothing written)\n",
        p.resume and "an interrupted sync" or "incremental sync", p.new_calls, ist(p.stop_epoch), p.calls, p.pages,
        p.pending_in_progress, where))
    end
    return EXIT_OK
  end
  local r = result
  io.stdout:write(string.format("synced %d calls (%d new, %d updated, %d unchanged%s) in %d pages, %d requests, "
    .. "%.1f s: %s%s into %s\n", r.calls, r.new, r.updated, r.unchanged,
    r.left > 0 and string.format(", %d no longer listed", r.left) or "", r.pages, r.requests, r.elapsed,
    r.first and "first sync" or "incremental sync", r.resumed and " (resumed an interrupted run)" or "", where))
  return EXIT_OK
end

local function classify(err)
  if getmetatable(err) == CliError then
    return "osvi-calls sync: " .. err.message .. "\n(see osvi-calls sync --help)", EXIT_USAGE
  end
  local resumable = "\nosvi-calls sync: the database is consistent; the next run goes on from where this one stopped"
  if type(err) == "table" and err.kind then
    local msg = tostring(err)
    if err.kind == "usage" then
      local flag = err.key and FLAG_BY_KEY[err.key]
      return PROG .. ": " .. (flag and "--" .. flag .. ": " or "") .. msg, EXIT_USAGE
    elseif err.kind == "auth" or err.kind == "forbidden" then
      return PROG .. ": " .. msg, EXIT_AUTH
    end
    return PROG .. ": " .. msg .. resumable, EXIT_FAIL
  end
  local msg = tostring(err)
  if msg:find("interrupted!", 1, true) then return PROG .. ": interrupted" .. resumable, EXIT_INTERRUPTED end
  return PROG .. ": " .. msg .. resumable, EXIT_FAIL
end

--- Runs `osvi-calls sync` with argv (its arguments after "sync"); returns the exit status.
function M.main(argv)
  local ok, status = pcall(run, argv or {})
  if not ok then
    local msg
    msg, status = classify(status)
    io.stdout:flush()
    io.stderr:write(msg, "\n")
  end
  return status
end

M.parse_args, M.duration = parse_args, duration
return M
