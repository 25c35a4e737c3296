-- osvi.sync and `osvi-calls sync`: a local copy of the calls in SQLite (in-process) and
-- PostgreSQL (a real server, started here in a temporary directory on a Unix socket; pending
-- when it cannot start). After each scenario the database holds exactly the local server's
-- listing, call for call and field for field (as osvi hands the calls out):
--   a first sync; calls arriving and calls ending (in_progress -> picked) between syncs; calls
--   arriving during a sync; in-progress calls older than the overlap window, read again by
--   rank; a run stopped by every kind of failure, then resumed; runs killed with kill -9 at
--   20 seeded random moments, then resumed; API strings with quotes, backslashes, binary and
--   emoji; 1,000 new calls on a 100,000-call copy read in at most a dozen pages.
-- The server's knobs (arrivals, /_control/update, the fault script) are described in
-- spec/support/osvi_server.lua.
local H = require "spec.support.helper"
local cjson = require "cjson"
local socket = require "socket"

local HAS_DBI = pcall(require, "DBI")
local sync = HAS_DBI and require "osvi.sync"

local CALLS, PER_PAGE = 2000, 100
-- child processes (the CLI, the examples) load the osvi.so under test
local CHILD_ENV = string.format("LUA_CPATH='%s;;' OSVI_API_TOKEN=%s", os.getenv("OSVI_CPATH") or "./?.so", H.TOKEN)
local TMP = os.tmpname()
os.remove(TMP)
assert(H.execute("mkdir -p " .. TMP))

-- A call of /_control/calls as osvi hands it out: no nulls, integral numbers as integers.
local function norm(v)
  if type(v) == "number" then
    if math.tointeger and v == math.floor(v) then return math.tointeger(v) end
    return v
  end
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do
    if x ~= cjson.null then t[k] = norm(x) end
  end
  return t
end

local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- What differs between the database and a list of calls (as /_control/calls gives them):
-- nil when the database holds exactly those calls.
local function differences(store, calls)
  local want, order = {}, {}
  for i, c in ipairs(calls) do
    c = norm(c)
    want[c.call_id], order[i] = c, c.call_id
  end
  local got = {}
  for _, c in ipairs(store:calls()) do got[c.call_id] = c end
  local missing, extra, changed = {}, {}, {}
  for _, id in ipairs(order) do
    if not got[id] then missing[#missing + 1] = id
    elseif not same(got[id], want[id]) then changed[#changed + 1] = id .. ": " .. cjson.encode(got[id])
      .. " ~= " .. cjson.encode(want[id]) end
  end
  for id in pairs(got) do if not want[id] then extra[#extra + 1] = id end end
  if #missing + #extra + #changed == 0 then return nil end
  return string.format("%d missing (%s), %d not in the listing (%s), %d different (%s)", #missing,
    table.concat(missing, " ", 1, math.min(3, #missing)), #extra, table.concat(extra, " ", 1, math.min(3, #extra)),
    #changed, table.concat(changed, " | ", 1, math.min(2, #changed)))
end

------------------------------------------------------------------------------
-- PostgreSQL: initdb + pg_ctl in a temporary directory, a Unix socket only
------------------------------------------------------------------------------

local PG = { dir = TMP .. "/pg", port = 54329 }

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"@@$?\"")
  local out = p:read("*a")
  p:close()
  local body, rc = out:match("^(.-)@@(%d+)%s*$")
  return tonumber(rc) == 0, body or out
end

function PG.start()
  local ok, dir = sh("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1")
  dir = ok and dir:gsub("%s+$", "") or ""
  if dir == "" then return nil, "PostgreSQL is not installed (Debian: postgresql)" end
  if not pcall(require, "dbd.postgresql") then
    return nil, "LuaDBI's PostgreSQL driver is missing (lua-dbi-postgresql)"
  end
  -- initdb refuses root: run the server as the postgres user when we are root
  local root = sh("test \"$(id -u)\" = 0")
  local as = root and "runuser -u postgres -- " or ""
  if root and not sh("id postgres") then return nil, "no postgres user to run the server as" end
  sh("mkdir -p " .. PG.dir)
  if root then sh("chown postgres " .. PG.dir) end
  local data = PG.dir .. "/data"
  local okinit, out = sh(as .. dir .. "/initdb -D " .. data .. " -U osvi -A trust -E UTF8 --locale=C")
  if not okinit then return nil, "initdb failed: " .. out:sub(-300) end
  local okstart, out2 = sh(as .. dir .. "/pg_ctl -D " .. data .. " -l " .. PG.dir .. "/log -w -t 30 start -o \""
    .. "-k " .. PG.dir .. " -c listen_addresses= -p " .. PG.port .. " -c fsync=off -c synchronous_commit=off\"")
  if not okstart then return nil, "pg_ctl start failed: " .. out2:sub(-300) end
  PG.stop_cmd = as .. dir .. "/pg_ctl -D " .. data .. " -m immediate -w stop"
  PG.up = true
  return true
end

function PG.stop()
  if PG.up then sh(PG.stop_cmd); PG.up = false end
end

local pg_count = 0
-- A new database on the temporary server; returns its URL.
function PG.fresh()
  pg_count = pg_count + 1
  local name = "osvi_sync_" .. pg_count
  local DBI = require "DBI"
  local conn = assert(DBI.Connect("PostgreSQL", "postgres", "osvi", nil, PG.dir, PG.port))
  conn:autocommit(true)
  local st = assert(conn:prepare("CREATE DATABASE " .. name))
  assert(st:execute())
  conn:close()
  return "postgres://osvi@/" .. name .. "?host=" .. PG.dir .. "&port=" .. PG.port
end

------------------------------------------------------------------------------
-- The scenarios, for each database
------------------------------------------------------------------------------

local db_count = 0
local BACKENDS = {
  { name = "SQLite", fresh = function()
      db_count = db_count + 1
      return "sqlite:" .. TMP .. "/db" .. db_count .. ".sqlite"
    end },
  { name = "PostgreSQL", fresh = PG.fresh, server = true },
}

local function control(server, path, value)
  return server:control("POST", path, value)
end

for _, backend in ipairs(BACKENDS) do
  describe("osvi.sync into " .. backend.name, function()
    local server, why_not

    setup(function()
      if not HAS_DBI then why_not = "LuaDBI is not installed (lua-dbi-sqlite3)"; return end
      if backend.server then
        local ok, err = PG.start()
        if not ok then why_not = err; return end
      elseif not pcall(require, "dbd.sqlite3") then
        why_not = "LuaDBI's SQLite driver is missing (lua-dbi-sqlite3)"
        return
      end
      server = H.start { calls = CALLS }
    end)

    teardown(function()
      if server then server:stop() end
      if backend.server then PG.stop() end
    end)

    before_each(function()
      if server then server:reset() end
    end)

    -- runs `fn(db_url)` unless the database cannot be had here
    local function test(name, fn)
      it(name, function()
        if why_not then pending(why_not) return end
        fn(backend.fresh())
      end)
    end

    local function client(opts)
      local o = { max_retries = 0 }
      for k, v in pairs(opts or {}) do o[k] = v end
      return server:client(o)
    end

    local function run(db, opts)
      local o = { db = db, client = client(), commit_interval = 0 }
      for k, v in pairs(opts or {}) do o[k] = v end
      return sync.run(o)
    end

    local function check(db)
      local store = sync.open(db)
      local problems = differences(store, server:calls())
      store:close()
      assert.is_nil(problems)
    end

    test("a first sync: the database holds the listing, schema version 1", function(db)
      local r = run(db)
      assert.is_true(r.first)
      assert.equal(CALLS, r.new)
      assert.equal(CALLS, r.calls)
      assert.equal(CALLS / PER_PAGE, r.pages)
      check(db)
      local store = sync.open(db)
      assert.equal("1", tostring(store:query("SELECT CAST(version AS TEXT) AS v FROM osvi_schema")[1].v))
      local st = store:state({})
      assert.equal(1, st.runs)
      assert.is_nil(st.run_id)
      store:close()
    end)

    test("calls arriving and calls ending between syncs: new, updated, unchanged", function(db)
      run(db)
      control(server, "/_control/arrive", { calls = 150 })
      local ended = control(server, "/_control/update", { calls = 2 }).updated
      assert.equal(2, ended)
      local r = run(db)
      assert.is_false(r.first)
      assert.equal(150, r.new)
      assert.is_true(r.updated >= 2)
      assert.is_true(r.unchanged > 0)
      check(db)
      -- calls that end later still: the in-progress calls among the new ones
      control(server, "/_control/update", { calls = 1000 })
      control(server, "/_control/arrive", { calls = 7 })
      r = run(db)
      assert.equal(7, r.new)
      check(db)
      -- nothing new: the window only
      local before = server:stats().requests
      r = run(db, { overlap = 0 })
      assert.equal(0, r.new + r.updated)
      assert.equal(1, server:stats().requests - before)
    end)

    test("in-progress calls older than the overlap window are read again by rank", function(db)
      run(db)
      control(server, "/_control/arrive", { calls = 300 })
      run(db, { overlap = 0 })
      local store = sync.open(db)
      local pending_before = tonumber(store:query(
        "SELECT CAST(count(*) AS TEXT) AS n FROM osvi_sync_in_progress")[1].n)
      store:close()
      assert.is_true(pending_before > 0)
      control(server, "/_control/arrive", { calls = 200 })
      control(server, "/_control/update", { calls = 100000 }) -- every call in progress ends
      local r = run(db, { overlap = 0 })
      assert.is_true(r.updated >= pending_before)
      check(db)
      store = sync.open(db)
      assert.equal("0", tostring(store:query("SELECT CAST(count(*) AS TEXT) AS n FROM osvi_sync_in_progress")[1].n))
      store:close()
    end)

    test("calls arriving during a sync: then the next sync catches up", function(db)
      local start = server:calls()
      server:config { arrivals_per_request = 5 }
      run(db)
      server:config { arrivals_per_request = 0 }
      local store = sync.open(db)
      for _, c in ipairs(start) do
        local got = store:get(c.call_id)
        assert.is_truthy(got, c.call_id)
        assert.is_true(same(got, norm(c)))
      end
      store:close()
      run(db)
      check(db)
    end)

    test("a filtered copy: calls that leave the view are forgotten as in progress", function(db)
      local r = run(db, { filters = { status = "in_progress" } })
      assert.is_true(r.calls > 0)
      control(server, "/_control/update", { calls = 100000 })
      r = run(db, { filters = { status = "in_progress" } })
      assert.equal(0, r.calls)
      local store = sync.open(db)
      assert.equal("0", tostring(store:query("SELECT CAST(count(*) AS TEXT) AS n FROM osvi_sync_in_progress")[1].n))
      -- its own state; a whole-account sync next to it brings every row up to date
      assert.equal(2, store:state({ status = "in_progress" }).runs)
      assert.is_nil(store:state({}))
      store:close()
      run(db)
      check(db)
    end)

    -- a failure of each kind at page 6 of a first sync, then a run that finishes it
    local FAILURES = {
      { "server", { page = 6, status = 500 } },
      { "rate_limited", { page = 6, status = 429, headers = { ["Retry-After"] = "3600" } } },
      { "auth", { page = 6, status = 401 } },
      { "forbidden", { page = 6, status = 403 } },
      { "not_found", { page = 6, status = 404 } },
      { "validation", { page = 6, status = 422 } },
      { "http", { page = 6, status = 418 } },
      { "network", { page = 6, fault = "reset" } },
      { "timeout", { page = 6, fault = "delay", ms = 1500 } },
      { "decode", { page = 6, status = 200, body = "<html>proxy error</html>" } },
      { "api", { page = 6, status = 200, body = '{"success":false,"errors":["try later"]}' } },
      { "too_large", { page = 6, fault = "huge", bytes = 4000000 } },
    }
    for _, f in ipairs(FAILURES) do
      test("a failure (" .. f[1] .. ") mid-run, then resumed: nothing lost, nothing twice", function(db)
        server:script { f[2] }
        local ok, err = pcall(run, db, { client = client { timeout = 1, max_response_bytes = 1000000 } })
        assert.is_false(ok)
        assert.equal(f[1], type(err) == "table" and err.kind or tostring(err))
        local store = sync.open(db)
        local st = store:state({})
        assert.is_truthy(st.run_id)                   -- an unfinished run, recorded
        assert.equal(500, st.run_calls)               -- pages 1 to 5, committed
        store:close()
        control(server, "/_control/arrive", { calls = 30 })
        local before = server:stats().requests
        local r = run(db)
        assert.is_true(r.resumed)
        assert.equal(CALLS - 500 + 30, r.new)
        -- the top down to where the first run started, then from where it stopped
        assert.is_true(server:stats().requests - before <= (CALLS - 500 + 30) / PER_PAGE + 3)
        check(db)
      end)
    end

    test("a failure of the listing itself (inconsistent: calls arriving too fast), then resumed", function(db)
      server:config { arrivals_per_request = 250 }
      local ok, err = pcall(run, db)
      assert.is_false(ok)
      assert.equal("inconsistent", err.kind)
      server:config { arrivals_per_request = 0 }
      run(db)
      check(db)
    end)

    test("an interruption (Ctrl-C) between pages, then resumed", function(db)
      local pages = 0
      local ok, err = pcall(run, db, { progress = function()
        pages = pages + 1
        if pages == 7 then error("interrupted!", 0) end
      end })
      assert.is_false(ok)
      assert.equal("interrupted!", err)
      local r = run(db)
      assert.is_true(r.resumed)
      assert.equal(CALLS - 600, r.new) -- page 7 was not committed yet
      check(db)
    end)

    test("API strings land byte for byte: quotes, backslashes, binary, emoji, fields added later", function(db)
      local weird = {
        { call_id = "w-1", agent_name = [[He said "hi" \ 'x' -- ; DROP TABLE calls; --]], status = "picked",
          phone_number = "+91 😀 ñ 中文", tag = { id = 12, name = "emoji 🎉 \\n", color_code = "#fff" },
          created_at = "2026-06-30T21:00:00+05:30", duration_seconds = 12345678901234,
          transcript = "line1\nline2\ttab \"q\"", nested = { a = { 1, 2, { b = "c" } }, f = 1.5, t = true } },
        { call_id = "w-2", agent_name = "\1\2\127 binary \128\255\254 end", call_ended_reason = "\194\160nbsp",
          tag = { id = 13, name = "n", color_code = "#000", description = "extra tag key" },
          created_at = "2026-06-30T20:59:00+05:30", call_picked_at = "not a time", campaign_id = "7" },
        { call_id = "w-3", tag = {}, created_at = "2026-06-30T20:58:00+05:30", duration_seconds = 12.5,
          status = "in_progress" },
      }
      local body = H.page_body(weird, { current_page = 1, total_pages = 1, total_count = #weird, per_page = 100 })
      server:script { { page = 1, status = 200, body = body } }
      -- a filter set that matches nothing else on the server
      local r = run(db, { filters = { phone_number = "+1999" } })
      assert.equal(3, r.new)
      local store = sync.open(db)
      for _, c in ipairs(weird) do
        assert.is_true(same(norm(c), store:get(c.call_id)), c.call_id)
      end
      local row = store:query("SELECT agent_name, phone_number, tag_name FROM calls WHERE call_id = ?", "w-1")[1]
      assert.equal(weird[1].agent_name, row.agent_name)
      assert.equal(weird[1].phone_number, row.phone_number)
      assert.equal(weird[1].tag.name, row.tag_name)
      row = store:query("SELECT agent_name, call_ended_reason FROM calls WHERE call_id = ?", "w-2")[1]
      if store.utf8 then
        -- PostgreSQL in UTF-8 takes only UTF-8 in text: a readable copy in the column, the
        -- bytes in extra (store:get above gave them back)
        assert.equal("\1\2\127 binary \239\191\189\239\191\189\239\191\189 end", row.agent_name)
      else
        assert.equal(weird[2].agent_name, row.agent_name)
      end
      assert.equal("\194\160nbsp", row.call_ended_reason)
      store:close()
    end)

    test("examples/sync_report.lua: report.lua's report, line for line, from the database", function(db)
      if _VERSION ~= "Lua 5.4" then pending("the examples are Lua 5.4 scripts") return end
      control(server, "/_control/arrive", { calls = 40 })
      run(db)
      local function out(cmd)
        local p = io.popen(string.format("%s OSVI_BASE_URL=%s %s %s 2>&1", CHILD_ENV, server.url, H.LUA, cmd))
        local text = p:read("*a")
        p:close()
        return text
      end
      for _, dates in ipairs { "", " 2026-06-25 2026-06-30", " 2026-06-30T10:00:00+05:30" } do
        local api = out("examples/report.lua" .. dates)
        assert.matches("^OSVI call report", api)
        -- (report.lua's order of statuses with the same count is the sort's own)
        local function lines(text)
          local t = {}
          for l in text:gmatch("[^\n]+") do t[#t + 1] = l end
          table.sort(t)
          return table.concat(t, "\n")
        end
        assert.equal(lines(api), lines(out("examples/sync_report.lua '" .. db .. "'" .. dates)))
      end
    end)

    test("a database with a newer schema is refused, not changed", function(db)
      local store = sync.open(db)
      store:query("UPDATE osvi_schema SET version = 99")
      store:close()
      local ok, err = pcall(sync.open, db)
      assert.is_false(ok)
      assert.equal("schema", err.kind)
    end)
  end)
end

------------------------------------------------------------------------------
-- The command line, and kill -9
------------------------------------------------------------------------------

describe("osvi-calls sync", function()
  local server, why_not

  setup(function()
    if not HAS_DBI or not pcall(require, "dbd.sqlite3") then
      why_not = "LuaDBI's SQLite driver is missing (lua-dbi-sqlite3)"
      return
    end
    server = H.start { calls = 3000, latency_ms = 3 }
  end)
  teardown(function() if server then server:stop() end end)

  local function cli(args, env)
    local p = io.popen(string.format("%s %s OSVI_BASE_URL=%s %s bin/osvi-calls sync %s 2>&1; echo \"@@$?\"",
      CHILD_ENV, env and "OSVI_API_TOKEN=" .. env.token or "", server.url, H.LUA, args))
    local out = p:read("*a")
    p:close()
    local body, rc = out:match("^(.-)@@(%d+)%s*$")
    return tonumber(rc), body
  end

  -- `osvi-calls sync ARGS` in the background, its output and exit status into TMP/NAME.out and .rc
  local function start(name, args)
    local p = io.popen(string.format("(%s OSVI_BASE_URL=%s %s bin/osvi-calls sync %s >%s/%s.out 2>&1; "
      .. "echo $? >%s/%s.rc) >/dev/null 2>&1 & echo started", CHILD_ENV, server.url, H.LUA, args, TMP, name,
      TMP, name))
    p:read("*l")
    p:close()
  end
  -- waits (30 s at most) for a run of start(): its exit status and output
  local function finished(name)
    for _ = 1, 3000 do
      local f = io.open(TMP .. "/" .. name .. ".rc")
      local rc = f and tonumber(f:read("*a"))
      if f then f:close() end
      if rc then
        f = io.open(TMP .. "/" .. name .. ".out")
        local out = f:read("*a")
        f:close()
        return rc, out
      end
      socket.sleep(0.01)
    end
  end

  it("syncs, says so in one line, and exits as the listing does", function()
    if why_not then pending(why_not) return end
    server:reset()
    local db = "sqlite:" .. TMP .. "/cli.sqlite"
    local rc, out = cli("--db " .. db .. " --dry-run")
    assert.equal(0, rc, out)
    assert.matches("dry run: first sync: would read the whole listing, 3000 calls", out, 1, true)
    assert.is_nil(io.open(TMP .. "/cli.sqlite"))      -- nothing written
    rc, out = cli("--db " .. db .. " --status picked,busy")
    assert.equal(0, rc, out)
    assert.matches("^synced %d+ calls %(%d+ new, 0 updated, 0 unchanged%) in %d+ pages, %d+ requests, [%d.]+ s: "
      .. "first sync into sqlite:", out)
    rc, out = cli("--db " .. db .. " --status picked,busy --overlap 1h")
    assert.equal(0, rc, out)
    assert.matches("0 new, 0 updated, %d+ unchanged%) in 1 pages, 1 requests.*incremental sync", out)
    rc, out = cli("--db " .. db .. " --stauts picked")
    assert.equal(2, rc, out)
    rc, out = cli("--db " .. db .. " --status pikced")
    assert.equal(2, rc, out)
    assert.matches("--status", out, 1, true)
    rc, out = cli("--db mysql://x")
    assert.equal(2, rc, out)
    rc, out = cli("--db " .. db, { token = "wrong-token-0000" })
    assert.equal(3, rc, out)
    assert.not_matches("wrong%-token", out)
    server:script { { page = 3, status = 503, times = 5 } }
    rc, out = cli("--db sqlite:" .. TMP .. "/cli2.sqlite --retries 0")
    assert.equal(1, rc, out)
    assert.matches("the next run goes on from where this one stopped", out, 1, true)
  end)

  it("two runs of the same filters at once: the second takes over, the first stops with a conflict at its next "
    .. "commit; the copy is whole", function()
    if why_not then pending(why_not) return end
    server:reset()
    server:config { latency_ms = 20 } -- the first run: 300 pages of 10, 20 ms each, committing once a second
    local file = TMP .. "/twice.sqlite"
    local db = "sqlite:" .. file
    start("twice", "--db " .. db .. " --per-page 10 --prefetch 0")
    -- until the first run has committed some pages (read without writing: LuaDBI directly)
    local DBI = require "DBI"
    local committed = 0
    for _ = 1, 1000 do
      local conn = io.open(file) and DBI.Connect("SQLite3", file)
      if conn then
        local st = conn:prepare("SELECT CAST(run_calls AS TEXT) FROM osvi_sync_state")
        if st and st:execute() then
          local row = st:fetch(false)
          committed = row and tonumber(row[1]) or 0
        end
        -- the statement first: LuaDBI's close of a connection with a statement left open
        -- forgets the connection without closing it (sqlite3_close refuses)
        if st then st:close() end
        conn:close()
      end
      if committed >= 100 then break end
      socket.sleep(0.01)
    end
    assert.is_true(committed >= 100, "the first run committed nothing")
    local rc, out = cli("--db " .. db)
    assert.equal(0, rc, out)
    assert.matches("^synced ", out)
    local first_rc, first_out = finished("twice")
    assert.equal(1, first_rc, first_out)
    assert.matches("another sync of the same filters took over this run", first_out, 1, true)
    local store = sync.open(db)
    assert.is_nil(differences(store, server:calls()))
    assert.equal(1, store:state({}).runs) -- one run, finished by the second process
    assert.is_nil(store:state({}).run_id)
    store:close()
    server:reset()
    rc, out = cli("--db " .. db)
    assert.equal(0, rc, out)
    assert.matches("incremental sync", out, 1, true)
  end)

  it("two syncs of different filters into one file at once: both finish", function()
    if why_not then pending(why_not) return end
    server:reset()
    server:config { latency_ms = 20 }
    local file = TMP .. "/both.sqlite"
    local db = "sqlite:" .. file
    -- each about 2 to 3 s long, committing about once a second, started together
    start("picked", "--db " .. db .. " --status picked --per-page 20 --prefetch 0")
    start("all", "--db " .. db .. " --per-page 20 --prefetch 0")
    local rc1, out1 = finished("picked")
    local rc2, out2 = finished("all")
    assert.equal(0, rc1, out1)
    assert.equal(0, rc2, out2)
    assert.matches("^synced ", out1)
    assert.matches("^synced 3000 calls", out2)
    local store = sync.open(db)
    assert.is_nil(differences(store, server:calls()))
    assert.equal(1, store:state({ status = "picked" }).runs)
    assert.equal(1, store:state({}).runs)
    store:close()
  end)

  it("killed with kill -9 at 20 seeded random moments, then resumed: nothing lost, nothing twice", function()
    if why_not then pending(why_not) return end
    server:reset()
    local rand = H.seeded(13)
    local file = TMP .. "/kill.sqlite"
    local db = "sqlite:" .. file
    local kills = 0
    for round = 1, 20 do
      -- between runs the account moves on: calls arrive and calls end
      if round % 4 == 0 then control(server, "/_control/arrive", { calls = rand(1, 40) }) end
      if round % 5 == 0 then control(server, "/_control/update", { calls = rand(1, 5) }) end
      local p = io.popen(string.format("%s OSVI_BASE_URL=%s %s bin/osvi-calls sync --db %s "
        .. "--prefetch 1 --overlap 30d >/dev/null 2>&1 & echo $!", CHILD_ENV, server.url, H.LUA, db))
      local pid = tonumber(p:read("*l"))
      p:close()
      socket.sleep(rand(20, 300) / 1000)
      if H.execute("kill -9 " .. pid .. " 2>/dev/null") then kills = kills + 1 end
      for _ = 1, 200 do -- until it is gone
        if not H.execute("kill -0 " .. pid .. " 2>/dev/null") then break end
        socket.sleep(0.01)
      end
      -- whatever the moment, the database is whole
      if io.open(file) then
        local store = sync.open(db)
        assert.equal("ok", store:query("PRAGMA integrity_check")[1].integrity_check)
        store:close()
      end
    end
    assert.is_true(kills >= 10, "only " .. kills .. " runs were still going when killed")
    local rc, out = cli("--db " .. db .. " --overlap 30d")
    assert.equal(0, rc, out)
    local store = sync.open(db)
    assert.is_nil(differences(store, server:calls()))
    store:close()
  end)
end)

------------------------------------------------------------------------------
-- Incremental cost at scale
------------------------------------------------------------------------------

describe("osvi.sync at 100,000 calls", function()
  it("1,000 new calls on a 100,000-call copy: at most a dozen pages read", function()
    if not HAS_DBI or not pcall(require, "dbd.sqlite3") then pending("LuaDBI's SQLite driver is missing") return end
    local server = H.start { calls = 100000 }
    local ok, err = pcall(function()
      local db = "sqlite:" .. TMP .. "/big.sqlite"
      local r = sync.run { db = db, client = server:client { prefetch = 4 } }
      assert.equal(100000, r.new)
      server:arrive(1000)
      local before = server:idle().requests
      r = sync.run { db = db, client = server:client { prefetch = 4 }, overlap = 3600 }
      local read = server:idle().requests - before
      assert.equal(1000, r.new)
      assert.is_true(read <= 12, read .. " requests")
      -- the whole copy is the listing
      local store = sync.open(db)
      assert.equal("101000", tostring(store:query("SELECT CAST(count(*) AS TEXT) AS n FROM calls")[1].n))
      local listing = server:calls()
      for i = 1, 1200 do
        assert.is_true(same(norm(listing[i]), store:get(listing[i].call_id)), listing[i].call_id)
      end
      store:close()
    end)
    server:stop()
    if not ok then error(err, 0) end
  end)
end)

teardown(function()
  PG.stop()
  os.execute("rm -rf " .. TMP)
end)
