-- Lifetimes under careless and hostile use: a client closed while its
-- cursors are alive (pages in flight), finalizers that re-enter the paging
-- code, fork() with kept-alive connections, limits at math.maxinteger, and
-- cursors closed, abandoned or interleaved in every way a caller can.
--
-- Whatever can crash runs in a child process (a segfault is a failure of that
-- spec, not a dead runner), bounded by timeout(1): a hang is a failure too.
-- Where valgrind is installed the use-after-free scenarios run under it as
-- well (libcurl is not instrumented, so ASan cannot see them); not when the
-- whole run is already under valgrind (make check-valgrind sets
-- OSVI_SPEC_WRAPPER) or under the sanitizers (make check-asan: the child
-- interpreter is then the ASan build, which UBSan watches instead), nor on
-- LuaJIT.
local H = require "spec.support.helper"

local CPATH = os.getenv("OSVI_CPATH") or "./?.so"
-- make check-valgrind sets OSVI_SPEC_SLACK=10: everything is slower there
local SLACK = tonumber(os.getenv("OSVI_SPEC_SLACK") or "") or 1

local server
-- call_ids, in the listing's order (newest first): all, and per filter
local ALL, PICKED, BUSY, INBOUND, VOICEMAIL

local function has_command(name)
  return H.execute("command -v " .. name .. " >/dev/null 2>&1")
end

local IS_LUAJIT = rawget(_G, "jit") ~= nil
local VALGRIND_WHY_NOT = (not has_command("valgrind") and "valgrind is not installed")
  or (os.getenv("OSVI_SPEC_WRAPPER") and "the whole run is already under valgrind (OSVI_SPEC_WRAPPER)")
  or (os.getenv("ASAN_OPTIONS") and "the child interpreter is a sanitizer build")
  or (IS_LUAJIT and "LuaJIT under valgrind reports its own allocator")
  or nil

-- Lua source for an array of strings
local function lua_list(t)
  local parts = {}
  for i, s in ipairs(t) do parts[i] = string.format("%q", s) end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- What every child script starts with. The scripts stay within what Lua
-- 5.1, 5.3, 5.4 and LuaJIT all have (no //, no table.pack, no goto).
local PRELUDE = [[
package.cpath = %q .. package.cpath
local osvi = require "osvi"
local URL, TOKEN, SLACK = %q, %q, %s
local function client(opts)
  local o = { token = TOKEN, base_url = URL, timeout = 5 * SLACK,
              connect_timeout = 2 * SLACK, retry_base = 0.01 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return osvi.new(o)
end
local function show(err)
  if type(err) == "table" then
    return "a " .. tostring(err.kind) .. " error: " .. tostring(err.message)
  end
  return tostring(err)
end
-- fn(...) must raise a usage error that says the client is closed
local function raises_closed(what, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error(what .. ": no error, where a usage error (the client is closed) was due", 2) end
  if type(err) ~= "table" or err.kind ~= "usage" or not tostring(err.message):find("closed", 1, true) then
    error(what .. ": expected a usage error saying the client is closed, got " .. show(err), 2)
  end
end
-- whether got[1..n] are want[1..n] (n: #want); and where they differ
local function same(got, want, n)
  n = n or #want
  for i = 1, n do
    if got[i] ~= want[i] then
      return false, string.format("differ at %%d of %%d (%%d got): %%s instead of %%s",
        i, n, #got, tostring(got[i]), tostring(want[i]))
    end
  end
  if #got ~= n then return false, string.format("%%d calls where %%d were due", #got, n) end
  return true
end
-- an object whose finalizer is fn (Lua 5.1 and LuaJIT: only userdata have one)
local function finalizer(fn)
  if rawget(_G, "newproxy") then
    local p = newproxy(true)
    getmetatable(p).__gc = fn
    return p
  end
  return setmetatable({}, { __gc = fn })
end
]]

-- Runs a Lua chunk (PRELUDE, then `lists`, then code) in a child
-- interpreter, under valgrind with opts.valgrind, killed after opts.timeout
-- seconds (times SLACK). Returns its exit status (a number) and its output.
local function child(code, opts)
  opts = opts or {}
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write(string.format(PRELUDE, CPATH .. ";", server.url, H.TOKEN, tostring(SLACK)))
  for name, list in pairs(opts.lists or {}) do
    f:write("local ", name, " = ", lua_list(list), "\n")
  end
  f:write(code)
  f:close()
  local cmd = "env -u OSVI_API_TOKEN -u OSVI_BASE_URL -u OSVI_LOG timeout -k 5 "
    .. math.ceil((opts.timeout or 30) * SLACK) .. " "
    .. (opts.valgrind and "valgrind --quiet --error-exitcode=99 " or "")
    .. H.LUA .. " " .. tmp
  local p = io.popen(cmd .. " 2>&1; echo \"@@exit=$?\"")
  local out = p:read("*a")
  p:close()
  os.remove(tmp)
  local rest, status = out:match("^(.-)@@exit=(%d+)\n$")
  return tonumber(status), rest or out
end

local function explain(status)
  if status == 0 then return "exited 0" end
  if status == 124 or status == 137 then return "timed out (a hang), status " .. status end
  if status == 99 then return "valgrind found errors (status 99)" end
  if status and status > 128 then return "crashed: killed by signal " .. (status - 128) end
  return "failed with status " .. tostring(status)
end

-- The child must exit 0; returns its output.
local function child_ok(code, opts)
  local status, out = child(code, opts)
  assert(status == 0, "the child " .. explain(status) .. ":\n" .. out)
  return out
end

local function ids_of(list, pred)
  local out = {}
  for _, call in ipairs(list) do
    if not pred or pred(call) then out[#out + 1] = call.call_id end
  end
  return out
end

-- the ids of a listing by client c
local function listing(c, filters)
  local out = {}
  for call in c:calls(filters) do out[#out + 1] = call.call_id end
  return out
end

describe("lifetime", function()
  setup(function()
    server = H.start { calls = 2000 }
    local all = server:calls()
    ALL = ids_of(all)
    PICKED = ids_of(all, function(c) return c.status == "picked" end)
    BUSY = ids_of(all, function(c) return c.status == "busy" end)
    VOICEMAIL = ids_of(all, function(c) return c.status == "voicemail" end)
    INBOUND = ids_of(all, function(c) return c.call_type == "inbound" end)
  end)
  teardown(function() server:stop() end)
  before_each(function() server:reset() end)

  ---------------------------------------------------------------------------
  -- 1 and 5: client:close() while cursors are alive, pages in flight
  ---------------------------------------------------------------------------
  describe("a client closed while its cursors are alive", function()
    -- Each case is the body of a function of `prefetch`; it raises on a
    -- broken contract. They need the server's 20 ms latency: with prefetch,
    -- pages are on their way when the client closes.
    local CASES = {
      { "makes the for loop's next step raise usage, closed on the first call", [[
        local c = client { prefetch = prefetch }
        local cur = c:calls { per_page = 100 }
        local n = 0
        local ok, err = pcall(function()
          for _ in cur do
            n = n + 1
            if n == 1 then c:close() end
          end
        end)
        if ok then error("the loop ended without an error, after " .. n .. " calls") end
        raises_closed("the step after client:close()", error, err)
        if n ~= 1 then error("the loop yielded " .. (n - 1) .. " calls after client:close()") end
        local ok2, v = pcall(cur)
        if ok2 and v ~= nil then error("a later step yielded a call") end
      ]] },
      { "makes the for loop's next step raise usage, closed in the middle of page 2", [[
        local c = client { prefetch = prefetch }
        local n = 0
        local ok, err = pcall(function()
          for _ in c:calls { per_page = 100 } do
            n = n + 1
            if n == 150 then c:close() end
          end
        end)
        if ok then error("the loop ended without an error, after " .. n .. " calls") end
        raises_closed("the step after client:close()", error, err)
        if n ~= 150 then error("the loop yielded " .. (n - 150) .. " calls after client:close()") end
      ]] },
      { "makes next_page() raise usage, every time", [[
        local c = client { prefetch = prefetch }
        local cur = c:calls { per_page = 100 }
        assert(cur:next_page())
        c:close()
        raises_closed("next_page() after client:close()", cur.next_page, cur)
        raises_closed("next_page() again", cur.next_page, cur)
        raises_closed("the for step", cur)
        cur:close()
        cur:close()
      ]] },
      { "makes poll() raise usage", [[
        local c = client { prefetch = prefetch }
        local cur = c:calls { per_page = 100 }
        local page, polls = false, 0
        while page == false do
          page = cur:poll()
          polls = polls + 1
          if polls > 1e7 then error("poll() never delivered page 1") end
        end
        assert(page and page.meta.current_page == 1)
        for _ = 1, 3 do cur:poll() end -- pages 2.. on their way
        c:close()
        raises_closed("poll() after client:close()", cur.poll, cur)
        raises_closed("poll() again", cur.poll, cur)
        raises_closed("next_page()", cur.next_page, cur)
      ]] },
      { "still raises usage after the client is closed and the collector ran", [[
        local c = client { prefetch = prefetch }
        local cur = c:calls { per_page = 100 }
        for _ = 1, 10 do assert(cur()) end
        c:close()
        c = nil -- the cursor holds the client: the collector cannot free it
        collectgarbage()
        collectgarbage()
        raises_closed("the for step", cur)
        raises_closed("next_page()", cur.next_page, cur)
        raises_closed("poll()", cur.poll, cur)
        cur = nil
        collectgarbage()
        collectgarbage()
      ]] },
      { "makes both of two cursors raise usage (the client's pages and a cursor's own)", [[
        local c = client { prefetch = prefetch }
        local a = c:calls { status = "picked", per_page = 100 }
        local b = c:calls { call_type = "inbound", per_page = 100 }
        for _ = 1, 150 do assert(a()) assert(b()) end
        c:close()
        raises_closed("cursor a", a)
        raises_closed("cursor b", b)
        raises_closed("b:next_page()", b.next_page, b)
        a:close()
        raises_closed("cursor b, a closed", b)
      ]] },
      { "refuses new cursors and pages, and closes twice", [[
        local c = client { prefetch = prefetch }
        local cur = c:calls { per_page = 50 }
        assert(cur())
        c:close()
        c:close()
        raises_closed("client:calls()", c.calls, c, { per_page = 10 })
        raises_closed("client:page()", c.page, c, {})
        raises_closed("client:count()", c.count, c, {})
        raises_closed("the open cursor", cur)
        assert(tostring(c):find("closed", 1, true), tostring(c))
        cur:close()
      ]] },
    }
    if H.HAS_CLOSE then
      CASES[#CASES + 1] = { "closed by <close> at the end of its scope, with a cursor that escapes it", [[
        local cur
        do
          local c <close> = client { prefetch = prefetch }
          cur = c:calls { per_page = 100 }
          assert(cur())
        end
        raises_closed("the escaped cursor", cur)
        raises_closed("next_page()", cur.next_page, cur)
      ]] }
    end

    local function script(prefetches, cases)
      local parts = { "local failures = {}\n" }
      for _, prefetch in ipairs(prefetches) do
        for _, case in ipairs(cases) do
          parts[#parts + 1] = string.format(
            "do local prefetch = %d\nlocal ok, err = pcall(function()\n%s\nend)\n"
            .. "if not ok then failures[#failures + 1] = %q .. show(err) end\n"
            .. "collectgarbage() collectgarbage() end\n",
            prefetch, case[2], "prefetch = " .. prefetch .. ", " .. case[1] .. ": ")
        end
      end
      parts[#parts + 1] = "if #failures > 0 then error(table.concat(failures, '\\n'), 0) end\n"
      return table.concat(parts)
    end

    for _, prefetch in ipairs { 0, 4, 16 } do
      for _, case in ipairs(CASES) do
        it(case[1] .. " (prefetch = " .. prefetch .. ")", function()
          server:config { latency_ms = 20 }
          child_ok(script({ prefetch }, { case }))
        end)
      end
    end

    it("all of the above under valgrind: no invalid read or write", function()
      if VALGRIND_WHY_NOT then
        pending(VALGRIND_WHY_NOT)
        return
      end
      server:config { latency_ms = 20 }
      child_ok(script({ 0, 4, 16 }, CASES), { valgrind = true, timeout = 120 })
    end)
  end)

  ---------------------------------------------------------------------------
  -- misuse of cursors: closed in their own loop, abandoned in coroutines
  ---------------------------------------------------------------------------
  describe("cursors misused", function()
    local MISUSE = [[
      local c = client { prefetch = 4 }
      -- closed inside its own loop body, pages in flight: the loop ends
      local cur = c:calls { per_page = 100 }
      local n = 0
      for _ in cur do
        n = n + 1
        if n == 150 then cur:close() end
      end
      if n ~= 150 then error("the loop went on " .. (n - 150) .. " calls after cur:close()") end
      if cur() ~= nil then error("a closed cursor yielded a call") end
      if cur:next_page() ~= nil then error("a closed cursor's next_page() returned a page") end
      if cur:poll() ~= nil then error("a closed cursor's poll() did not return nil") end
      cur:close()
      -- and the client lists exactly the picked calls after it
      local got = {}
      for call in c:calls { status = "picked", per_page = 100 } do got[#got + 1] = call.call_id end
      local ok, why = same(got, PICKED)
      if not ok then error("after a cursor closed in its loop: " .. why) end

      -- a coroutine abandoned in the middle of page 2 (pages in flight)
      local co = coroutine.wrap(function()
        for call in c:calls { per_page = 100 } do coroutine.yield(call) end
      end)
      for _ = 1, 150 do assert(co()) end
      co = nil
      got = {}
      for call in c:calls { call_type = "inbound", per_page = 100 } do got[#got + 1] = call.call_id end
      ok, why = same(got, INBOUND)
      if not ok then error("beside an abandoned coroutine's cursor: " .. why) end
      collectgarbage()
      collectgarbage()
      got = {}
      for call in c:calls { status = "busy", per_page = 100 } do got[#got + 1] = call.call_id end
      ok, why = same(got, BUSY)
      if not ok then error("after the abandoned coroutine was collected: " .. why) end

      -- an abandoned coroutine's cursor, its client closed before the collector comes
      local c2 = client { prefetch = 4 }
      local co2 = coroutine.wrap(function()
        for call in c2:calls { per_page = 100 } do coroutine.yield(call) end
      end)
      for _ = 1, 150 do assert(co2()) end
      c2:close()
      co2 = nil
      collectgarbage()
      collectgarbage()

      -- a cursor closed while a coroutine is suspended inside its loop,
      -- then the coroutine resumed
      local cur3 = c:calls { per_page = 100 }
      local co3 = coroutine.create(function()
        for call in cur3 do coroutine.yield(call) end
        return "done"
      end)
      for _ = 1, 150 do assert(coroutine.resume(co3)) end
      cur3:close()
      local resumed, what = coroutine.resume(co3)
      if not resumed or what ~= "done" then
        error("the resumed loop over a closed cursor: " .. show(what))
      end
    ]]
    if H.HAS_CLOSE then
      MISUSE = MISUSE .. [[
      -- coroutine.close() on a coroutine suspended inside the loop closes the
      -- cursor (the for loop's closing value): the client works on
      local co4 = coroutine.create(function()
        for call in c:calls { per_page = 100 } do coroutine.yield(call) end
      end)
      for _ = 1, 150 do assert(coroutine.resume(co4)) end
      assert(coroutine.close(co4))
      got = {}
      for call in c:calls { status = "voicemail", per_page = 100 } do got[#got + 1] = call.call_id end
      ok, why = same(got, VOICEMAIL)
      if not ok then error("after coroutine.close(): " .. why) end
      ]]
    end
    local function lists()
      return { PICKED = PICKED, INBOUND = INBOUND, BUSY = BUSY, VOICEMAIL = VOICEMAIL }
    end

    it("closed in their own loop, abandoned in coroutines: nothing breaks, the client lists exactly", function()
      server:config { latency_ms = 20 }
      child_ok(MISUSE, { lists = lists() })
    end)

    it("the same under valgrind", function()
      if VALGRIND_WHY_NOT then
        pending(VALGRIND_WHY_NOT)
        return
      end
      server:config { latency_ms = 20 }
      child_ok(MISUSE, { lists = lists(), valgrind = true, timeout = 120 })
    end)

    it("two cursors interleaved on one client with prefetch 4 each list exactly their own calls", function()
      server:config { latency_ms = 5 }
      local c = server:client { prefetch = 4 }
      local a = c:calls { status = "picked", per_page = 100 }
      local b = c:calls { call_type = "inbound", per_page = 50 }
      local ga, gb = {}, {}
      local da, db = false, false
      while not (da and db) do
        if not da then
          local x = a()
          if x then ga[#ga + 1] = x.call_id else da = true end
        end
        if not db then
          local y = b()
          if y then gb[#gb + 1] = y.call_id else db = true end
        end
      end
      assert.same(PICKED, ga)
      assert.same(INBOUND, gb)
    end)

    it("a cursor closed half-way lets a third one take its pages' place, each listing exactly", function()
      server:config { latency_ms = 5 }
      local c = server:client { prefetch = 4 }
      local a = c:calls { status = "picked", per_page = 20 }
      local b = c:calls { call_type = "inbound", per_page = 20 }
      local ga, gb, gd = {}, {}, {}
      for _ = 1, 50 do ga[#ga + 1] = a().call_id end
      for _ = 1, 30 do gb[#gb + 1] = b().call_id end
      a:close() -- pages of a are on their way; b goes on with its own
      local d = c:calls { status = "busy", per_page = 20 }
      -- d by pages, b by calls, in turns
      local dd, bd = false, false
      while not (dd and bd) do
        if not dd then
          local page = d:next_page()
          if page then
            for _, call in ipairs(page.data) do gd[#gd + 1] = call.call_id end
          else
            dd = true
          end
        end
        if not bd then
          local y = b()
          if y then gb[#gb + 1] = y.call_id else bd = true end
        end
      end
      for i = 1, 50 do assert.equal(PICKED[i], ga[i]) end
      assert.same(INBOUND, gb)
      assert.same(BUSY, gd)
    end)

    it("a cursor left open after an early exit does not disturb the next ones", function()
      server:config { latency_ms = 5 }
      local c = server:client { prefetch = 4 }
      local left = c:calls { status = "picked", per_page = 10 }
      for _ = 1, 15 do assert(left()) end -- not closed: holds its pages in flight
      assert.same(INBOUND, listing(c, { call_type = "inbound", per_page = 10 }))
      assert.same(BUSY, listing(c, { status = "busy", per_page = 10 }))
      -- and it goes on from where it was
      local rest = {}
      for call in left do rest[#rest + 1] = call.call_id end
      assert.equal(#PICKED - 15, #rest)
      for i, id in ipairs(rest) do assert.equal(PICKED[15 + i], id) end
    end)
  end)

  ---------------------------------------------------------------------------
  -- 2: finalizers re-entering the paging code
  ---------------------------------------------------------------------------
  describe("finalizers", function()
    -- A sweep: cursor A lists status=picked by pages of 10. While A is in
    -- next_page(), a garbage collector tuned to run a few of many pending
    -- finalizers at each allocation runs ACTION at the at-th finalizer call,
    -- for at = 1, 1 + step, ... over every finalizer call next_page() sees
    -- (counted first): so ACTION lands at every point of next_page() where
    -- Lua may allocate (decoding the page, asking for the next ones). After
    -- each round: A's calls are picked calls in order, and a new cursor B
    -- (call_type=inbound) yields exactly the server's inbound calls.
    local SWEEP = [[
      local N = 12000
      -- A goes on to its end after a re-entrant use: 6 pages are enough
      local LIMIT
      if ACTION ~= "close" and ACTION ~= "client_close" then LIMIT = 60 end
      local LUA54 = _VERSION == "Lua 5.4"
      local function tune(on)
        if on then
          collectgarbage("setpause", 0)
          if LUA54 then collectgarbage("incremental", 0, 200, 1) else collectgarbage("setstepmul", 200) end
        else
          collectgarbage("setpause", 200)
          if LUA54 then collectgarbage("incremental", 0, 100, 13) else collectgarbage("setstepmul", 200) end
        end
      end
      -- runs fn() with N finalizers pending, hook(k) run by the k-th of
      -- them; returns the number that ran during fn, and fn's pcall results
      local function with_finalizers(hook, fn)
        local armed, started, calls = false, false, 0
        local function fin()
          if not armed then started = true return end
          calls = calls + 1
          hook(calls)
        end
        collectgarbage()
        collectgarbage("stop")
        for _ = 1, N do finalizer(fin) end
        collectgarbage("restart")
        tune(true)
        repeat collectgarbage("step", 0) until started
        armed = true
        local ok, res = pcall(fn)
        armed = false
        tune(false)
        collectgarbage()
        return calls, ok, res
      end

      local c = client { prefetch = PREFETCH }
      local function add(page, out)
        for _, call in ipairs(page.data) do out[#out + 1] = call.call_id end
      end
      local function fresh_A(got)
        local A = c:calls { status = "picked", per_page = 10, limit = LIMIT }
        if WHICH == "second" then add(assert(A:next_page()), got) end
        return A
      end

      -- how many finalizer calls one next_page() sees; enough of them
      -- pending that some are left when it returns
      local M
      repeat
        local A0 = fresh_A({})
        M = with_finalizers(function() end, function() return A0:next_page() end)
        A0:close()
        if M > 0.75 * N then N = 2 * N end
      until M <= 0.75 * N or N > 200000
      if M < 10 or M > 0.75 * N then error("the finalizers ran " .. M .. " times in next_page(), of " .. N) end
      local step = math.max(1, math.floor(M / ROUNDS))

      local bad, rounds = {}, 0
      local function round(at, problems)
        local got = {}
        local A = fresh_A(got)
        local inner = {}
        local _, outer_ok, outer = with_finalizers(function(k)
          if k ~= at then return end
          if ACTION == "close" then A:close()
          elseif ACTION == "client_close" then c:close(); inner.closed = true
          elseif ACTION == "next_page" then inner[#inner + 1] = { pcall(A.next_page, A) }
          elseif ACTION == "step" then inner[#inner + 1] = { pcall(A) }
          elseif ACTION == "poll" then inner[#inner + 1] = { pcall(A.poll, A) }
          end
        end, function() return A:next_page() end)
        if outer_ok and type(outer) == "table" then add(outer, got) end
        for _, r in ipairs(inner) do
          if r[1] and r[2] then
            problems[#problems + 1] = "the re-entrant " .. ACTION .. " returned a " .. type(r[2])
          end
        end
        local ok, why = same(got, PICKED, #got)
        if not ok then problems[#problems + 1] = "A's calls: " .. why end
        -- (with pages in flight, one next_page() does not always make as
        -- many allocations as the one counted: the close may not have come)
        if ACTION == "client_close" and inner.closed then
          local ok2, err2 = pcall(A.next_page, A)
          if ok2 or type(err2) ~= "table" or err2.kind ~= "usage" then
            problems[#problems + 1] = "A's next step after the client closed: " .. (ok2 and "no error" or show(err2))
          end
          c = client { prefetch = PREFETCH }
        elseif ACTION ~= "close" then
          -- A goes on: with what it got, exactly the picked calls
          local ok2, err2 = pcall(function()
            for call in A do got[#got + 1] = call.call_id end
          end)
          if not ok2 then
            problems[#problems + 1] = "A, going on: " .. show(err2)
          else
            ok, why = same(got, PICKED, LIMIT)
            if not ok then problems[#problems + 1] = "A's whole listing: " .. why end
          end
        end
        A:close()
        local B = {}
        local okb, errb = pcall(function()
          for call in c:calls { call_type = "inbound", per_page = 100 } do B[#B + 1] = call.call_id end
        end)
        if not okb then
          problems[#problems + 1] = "B raised " .. show(errb)
        else
          ok, why = same(B, INBOUND)
          if not ok then
            local foreign = 0
            local inbound = {}
            for _, id in ipairs(INBOUND) do inbound[id] = true end
            for _, id in ipairs(B) do if not inbound[id] then foreign = foreign + 1 end end
            problems[#problems + 1] = "B (inbound): " .. why .. "; " .. foreign .. " of them not inbound"
          end
        end
      end
      for at = 1, M, step do
        rounds = rounds + 1
        local problems = {}
        local ok, err = pcall(round, at, problems)
        if not ok then problems[#problems + 1] = "raised " .. show(err) end
        if #problems > 0 then bad[#bad + 1] = "at " .. at .. ": " .. table.concat(problems, "; ") end
      end
      print(rounds .. " rounds, " .. M .. " finalizer calls in next_page(), " .. #bad .. " bad")
      if #bad > 0 then
        local shown = {}
        for i = 1, math.min(#bad, 6) do shown[i] = bad[i] end
        error(#bad .. " of " .. rounds .. " rounds went wrong:\n" .. table.concat(shown, "\n"), 0)
      end
    ]]

    local function sweep(action, which, prefetch, rounds)
      return child_ok(string.format("local ACTION, WHICH, PREFETCH, ROUNDS = %q, %q, %d, %d\n",
        action, which, prefetch, rounds) .. SWEEP,
        { lists = { PICKED = PICKED, INBOUND = INBOUND }, timeout = 60 })
    end

    it("closing cursor A while A is inside next_page() leaves a new cursor B only its own calls", function()
      sweep("close", "first", 16, 120)
      sweep("close", "second", 4, 120)
    end)

    it("a re-entrant A:next_page() from a finalizer during A:next_page() gets an error or nil", function()
      sweep("next_page", "second", 4, 120)
    end)

    it("a re-entrant for step of A from a finalizer during A:next_page() gets an error or nil", function()
      sweep("step", "second", 4, 120)
    end)

    it("a re-entrant A:poll() from a finalizer during A:next_page() gets an error or nil", function()
      sweep("poll", "second", 4, 120)
    end)

    it("closing the client from a finalizer during A:next_page() makes A's next step raise usage", function()
      sweep("client_close", "second", 4, 120)
    end)

    -- The cursor, then an object whose finalizer uses it, then the cursor's
    -- pool (made by its first next_page()): unreachable together, they are
    -- finalized in reverse order, so the pool goes first.
    local USE_AFTER_POOL = [[
      local result
      local function work()
        local c = client { prefetch = 4 }
        local cur = c:calls { per_page = 10 }
        local _ = finalizer(function() result = { pcall(USE, cur) } end)
        assert(cur:next_page())
      end
      work()
      collectgarbage()
      collectgarbage()
      if not result then error("the finalizer did not run") end
      if result[1] and result[2] then
        error("the finalizer's use of the cursor returned " .. tostring(result[2]) .. ", not nil or an error")
      end
      print(result[1] and "nil" or show(result[2]))
    ]]
    for _, use in ipairs {
      { "next_page()", "function(cur) return cur:next_page() end" },
      { "a for loop", "function(cur) for call in cur do return call end end" },
      { "poll()", "function(cur) return cur:poll() end" },
    } do
      it("a finalizer using a cursor whose pool was collected first gets an error or nil: " .. use[1], function()
        child_ok("local USE = " .. use[2] .. "\n" .. USE_AFTER_POOL)
      end)
    end

    it("a finalizer listing with a client whose pool was collected first: an error or the right page", function()
      -- the client, the object whose finalizer uses it, then a cursor and
      -- the client's pool: the pool is finalized first
      local out = child_ok([[
        local result
        local function work()
          local c = client { prefetch = 4 }
          local _ = finalizer(function()
            result = { pcall(function() return c:calls { per_page = 10 }:next_page() end) }
          end)
          local cur = c:calls { per_page = 10 }
          assert(cur:next_page())
          cur:close()
        end
        work()
        collectgarbage()
        collectgarbage()
        if not result then error("the finalizer did not run") end
        if result[1] and result[2] then
          local got = {}
          for i, call in ipairs(result[2].data) do got[i] = call.call_id end
          local ok, why = same(got, ALL, 10)
          if not ok then error("the finalizer's page: " .. why) end
          print("a page")
        else
          print(result[1] and "nil" or show(result[2]))
        end
      ]], { lists = { ALL = { (table.unpack or unpack)(ALL, 1, 10) } } })
      assert.truthy(out:find("a page") or out:find("nil") or out:find("error"), out)
    end)
  end)

  ---------------------------------------------------------------------------
  -- 3: fork()
  ---------------------------------------------------------------------------
  describe("fork()", function()
    local procs_so, why_not
    local function procs()
      if procs_so ~= nil or why_not then return procs_so, why_not end
      if pcall(require, "posix.unistd") and pcall(require, "posix.sys.wait") then
        procs_so = false -- lua-posix: the child scripts require it
        return procs_so
      end
      -- Debian's lua-posix is built for Lua 5.1 to 5.3: spec/c/procs.c instead
      local inc = ({ [5.4] = "/usr/include/lua5.4", [5.3] = "/usr/include/lua5.3" })[H.VERSION]
        or (IS_LUAJIT and "/usr/include/luajit-2.1") or "/usr/include/lua5.1"
      if not has_command("cc") then
        why_not = "neither lua-posix for " .. _VERSION .. " nor a C compiler for spec/c/procs.c"
        return nil, why_not
      end
      local base = os.tmpname()
      local so = base .. ".so"
      local p = io.popen("cc -std=c99 -O1 -shared -fPIC -I" .. inc .. " -o " .. so
        .. " spec/c/procs.c 2>&1; echo \"@@exit=$?\"")
      local out = p:read("*a")
      p:close()
      os.remove(base)
      if not out:find("@@exit=0", 1, true) then
        why_not = "neither lua-posix for " .. _VERSION .. " nor spec/c/procs.c built: " .. out
        return nil, why_not
      end
      procs_so = so
      return procs_so
    end
    teardown(function()
      if procs_so then os.remove(procs_so) end
    end)

    -- The parent lists with its client (so it holds kept-alive
    -- connections), then forks 3 children per round, each listing other
    -- filters with the same client, while the parent goes on listing too.
    -- Every answer must be exactly the server's calls for its filters. A
    -- child reports through its exit status; one that takes too long is
    -- killed (a hang). Bounded: rounds stop after BUDGET seconds.
    local FORK = [[
      local socket = require "socket"
      local P
      if PROCS_SO then
        P = assert(package.loadlib(PROCS_SO, "luaopen_osvi_spec_procs"))()
      else
        local unistd, wait, signal = require "posix.unistd", require "posix.sys.wait", require "posix.signal"
        P = { fork = unistd.fork, exit = unistd._exit, SIGKILL = signal.SIGKILL,
              kill = function(pid, sig) return signal.kill(pid, sig) end,
              wait = function(pid, nohang)
                local got, how, code = wait.wait(pid, nohang and wait.WNOHANG or 0)
                if got == 0 then return 0 end
                return got, how, code
              end }
      end
      local FILTERS = {
        picked = { { status = "picked", per_page = 100 }, PICKED },
        busy = { { status = "busy", per_page = 25 }, BUSY },
        inbound = { { call_type = "inbound", per_page = 100 }, INBOUND },
        voicemail = { { status = "voicemail", per_page = 50 }, VOICEMAIL },
      }
      local c = client { prefetch = PREFETCH, timeout = 2 * SLACK, max_retries = 0 }
      local function check(name)
        local got = {}
        for call in c:calls(FILTERS[name][1]) do got[#got + 1] = call.call_id end
        return same(got, FILTERS[name][2])
      end
      -- the parent's own listings before any fork: kept-alive connections
      for _, name in ipairs { "picked", "busy", "inbound", "voicemail" } do
        local ok, why = check(name)
        if not ok then error("before fork, " .. name .. ": " .. why) end
      end
      assert(c:page { per_page = 1 })

      local KIDS = { "picked", "busy", "inbound" }
      local counts = { right = 0, wrong = 0, errors = 0, crashed = 0, hung = 0 }
      local parent = { right = 0, wrong = 0, errors = 0 }
      local notes = {}
      local t0 = socket.gettime()
      local rounds = 0
      for _ = 1, ROUNDS do
        if socket.gettime() - t0 > BUDGET then break end
        rounds = rounds + 1
        io.stdout:flush()
        io.stderr:flush()
        local pids = {}
        for i, name in ipairs(KIDS) do
          local pid = P.fork()
          if pid == 0 then
            local code = 3
            pcall(function()
              local ok, same_ = pcall(check, name)
              code = ok and (same_ and 0 or 1) or 2
            end)
            P.exit(code)
          end
          assert(pid, "fork failed")
          pids[i] = pid
        end
        -- the parent keeps using the client meanwhile
        local ok, right, why = pcall(check, "voicemail")
        if not ok then
          parent.errors = parent.errors + 1
          notes[#notes + 1] = "parent: " .. show(right)
        elseif right then
          parent.right = parent.right + 1
        else
          parent.wrong = parent.wrong + 1
          notes[#notes + 1] = "parent: " .. why
        end
        local deadline = socket.gettime() + 10 * SLACK
        for i, pid in ipairs(pids) do
          while true do
            local got, how, code = P.wait(pid, true)
            if got == pid then
              if how ~= "exited" then
                counts.crashed = counts.crashed + 1
                notes[#notes + 1] = KIDS[i] .. ": " .. tostring(how) .. " " .. tostring(code)
              elseif code == 0 then counts.right = counts.right + 1
              elseif code == 1 then counts.wrong = counts.wrong + 1
              else counts.errors = counts.errors + 1 end
              break
            end
            if socket.gettime() > deadline then
              P.kill(pid, P.SIGKILL)
              P.wait(pid)
              counts.hung = counts.hung + 1
              break
            end
            socket.sleep(0.005)
          end
        end
      end
      -- and the parent's client still lists right after all of it
      local ok, right, why = pcall(check, "picked")
      if not ok or not right then
        parent.wrong = parent.wrong + 1
        notes[#notes + 1] = "parent at the end: " .. (ok and why or show(right))
      end
      local summary = string.format(
        "%d rounds in %.1f s (fork from %s); children: %d right, %d with another's or missing calls, "
        .. "%d errors, %d crashed, %d hung; parent: %d right, %d wrong, %d errors",
        rounds, socket.gettime() - t0, PROCS_SO and "spec/c/procs.c" or "lua-posix",
        counts.right, counts.wrong, counts.errors, counts.crashed, counts.hung,
        parent.right, parent.wrong, parent.errors)
      print(summary)
      if counts.right ~= 3 * rounds or parent.wrong + parent.errors > 0 or rounds < 3 then
        for i = 1, math.min(#notes, 5) do print(notes[i]) end
        error(summary, 0)
      end
    ]]

    for _, prefetch in ipairs { 0, 4 } do
      it("children of a process that used the client get only their own answers (prefetch = "
        .. prefetch .. ")", function()
        local so, why = procs()
        if so == nil then
          pending(why)
          return
        end
        child_ok(string.format("local PROCS_SO, PREFETCH, ROUNDS, BUDGET = %s, %d, 30, %d\n",
          so and string.format("%q", so) or "nil", prefetch, math.ceil(12 * SLACK)) .. FORK,
          { lists = { PICKED = PICKED, BUSY = BUSY, INBOUND = INBOUND, VOICEMAIL = VOICEMAIL },
            timeout = 90 })
      end)
    end
  end)

  ---------------------------------------------------------------------------
  -- 4: numbers at the edge (Lua 5.3 and later: math.maxinteger)
  ---------------------------------------------------------------------------
  describe("limit and page at math.maxinteger", function()
    -- in a child: under make check-asan UBSan stops the process at the
    -- first signed overflow (halt_on_error)
    local LIMITS = [[
      local cases = {
        { limit = math.maxinteger, prefetch = 4 },
        { limit = math.maxinteger - 1, prefetch = 4 },
        { limit = math.maxinteger, per_page = 7, prefetch = 4 },
        { limit = math.maxinteger - 1, per_page = 7, prefetch = 4 },
        { limit = math.maxinteger, prefetch = 0 },
        { limit = math.maxinteger, prefetch = 16 },
        { limit = math.maxinteger, per_page = 100, prefetch = 1 },
      }
      for _, case in ipairs(cases) do
        local c = client { prefetch = case.prefetch }
        local got = {}
        for call in c:calls { limit = case.limit, per_page = case.per_page } do got[#got + 1] = call.call_id end
        local ok, why = same(got, ALL)
        if not ok then
          error(string.format("limit %d, per_page %s, prefetch %d: %s", case.limit,
            tostring(case.per_page), case.prefetch, why))
        end
        c:close()
      end
      -- by pages, with poll
      local c = client { prefetch = 4 }
      local cur = c:calls { limit = math.maxinteger, per_page = 100 }
      local n = 0
      while true do
        local page = cur:poll()
        if page == nil then break end
        if page then n = n + #page.data end
      end
      if n ~= #ALL then error("poll with limit = math.maxinteger: " .. n .. " calls") end
      print("ok")
    ]]

    it("yields exactly every call with limit = math.maxinteger or math.maxinteger - 1", function()
      if H.VERSION < 5.3 then
        pending("no math.maxinteger before Lua 5.3")
        return
      end
      child_ok(LIMITS, { lists = { ALL = ALL }, timeout = 60 })
    end)

    it("with limit = math.maxinteger the pages are still prefetched", function()
      if H.VERSION < 5.3 then
        pending("no math.maxinteger before Lua 5.3")
        return
      end
      server:config { latency_ms = 20 }
      child_ok([[
        local got = {}
        for call in client { prefetch = 4 }:calls { limit = math.maxinteger, per_page = 100 } do
          got[#got + 1] = call.call_id
        end
        local ok, why = same(got, ALL)
        if not ok then error(why) end
      ]], { lists = { ALL = ALL } })
      local stats = server:stats()
      assert.equal(20, stats.requests)
      assert.truthy(stats.max_inflight >= 2, "max in flight " .. stats.max_inflight)
    end)

    it("page = math.maxinteger ends in an error, whatever the prefetch", function()
      if H.VERSION < 5.3 then
        pending("no math.maxinteger before Lua 5.3")
        return
      end
      -- the local server refuses a page beyond 18 digits (422); the paging
      -- code must not count past math.maxinteger on the way
      child_ok([[
        for _, prefetch in ipairs { 0, 4, 16 } do
          local c = client { prefetch = prefetch, max_retries = 0 }
          for _, page in ipairs { math.maxinteger, math.maxinteger - 1 } do
            local ok, err = pcall(function()
              for _ in c:calls { page = page, per_page = 100 } do end
            end)
            if ok then error("page " .. page .. " listed without an error") end
            local cur = c:calls { page = page }
            local ok2 = pcall(cur.next_page, cur)
            if ok2 then error("next_page() of page " .. page .. " without an error") end
            pcall(cur.poll, cur)
            cur:close()
            assert(type(err) == "table", show(err))
          end
        end
        print("ok")
      ]])
    end)
  end)
end)
