--[[
bench/run.lua -- the benchmark runner behind `make bench` (bench/bench.mk builds the tools and
passes the BENCH_* settings as environment variables).

It starts local servers (spec/support/server.lua) and an nginx TLS proxy, runs every contender
on every workload several times, round-robin, each under bench/rusage.c (wall, user+sys, peak
RSS of the contender's process), checks every run's count and call_id checksum against what the
server holds, and prints one table per workload, the floors and the targets.

Exit status: 0 when every run read the right calls (a target MISS is reported, not failed);
1 on a count/checksum mismatch or a contender that crashed. A contender that refuses a setting
it does not have yet (osvi-best before `prefetch`) is "not available", not a failure.
]]

local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"

local HERE = arg[0]:match("^(.*)/[^/]*$") or "."
package.path = HERE .. "/contenders/?.lua;" .. package.path
local new_checksum = require "checksum"

local function env(name, default)
  local v = os.getenv(name)
  return (v == nil or v == "") and default or v
end
local function env_int(name, default) return assert(math.tointeger(tonumber(env(name, default))), name) end

local function sh_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
local function capture(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return (out:gsub("%s+$", ""))
end

local CWD = capture("pwd")
local function absolute(path) return path:sub(1, 1) == "/" and path or CWD .. "/" .. path end

local CFG = {
  lua = env("BENCH_LUA", "lua5.4"),
  build = absolute(env("BENCH_BUILD", HERE .. "/.build")),
  cpath = env("BENCH_OSVI_CPATH", "./?.so"), -- where contenders load osvi.so from
  calls = env_int("BENCH_CALLS", 100000),
  small_calls = env_int("BENCH_SMALL_CALLS", 10000),
  per_page = env_int("BENCH_PER_PAGE", 100),
  latency_ms = env_int("BENCH_LATENCY_MS", 20),
  reps = env_int("BENCH_REPS", 5),
  slow_reps = env_int("BENCH_SLOW_REPS", 3),
  prefetch = env_int("BENCH_PREFETCH", 16),
  workloads = env("BENCH_WORKLOADS", "loopback latency https rss"),
  contenders = env("BENCH_CONTENDERS", "luasocket curl osvi-seq osvi-best"),
}
local TOKEN = "osvi-test-token1"
local LIFETIME = 1800 -- seconds: servers and nginx stop by themselves after this, whatever happens
local RUSAGE, FLOOR_TRANSFER = CFG.build .. "/rusage", CFG.build .. "/floor_transfer"
local SERVER = absolute(HERE .. "/../spec/support/server.lua")
local IN_FLIGHT = math.max(CFG.prefetch, 1) -- transfers at once in the floor for prefetching runs

local function selected(list, id) return (" " .. list .. " "):find(" " .. id .. " ", 1, true) ~= nil end

local function read_file(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

local function thousands(n)
  local s = string.format("%d", math.floor(n + 0.5))
  return (s:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", ""))
end

local function median(xs)
  local s = {}
  for i, x in ipairs(xs) do s[i] = x end
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  return n % 2 == 1 and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
end

------------------------------------------------------------------------------
-- Processes: servers, nginx, CPU time of a pid
------------------------------------------------------------------------------

local CLK_TCK = tonumber(capture("getconf CLK_TCK")) or 100

-- user+sys seconds a live process has used so far (0 if it is gone).
local function cpu_of(pid)
  local rest = read_file("/proc/" .. pid .. "/stat"):match("%) (.*)$")
  if not rest then return 0 end
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  return (tonumber(f[12]) + tonumber(f[13])) / CLK_TCK -- fields 14 and 15 of stat(5)
end

local started = {} -- { pid, pipe } of everything to stop at the end

local function start_server(calls, name)
  local log = CFG.build .. "/server-" .. name .. ".log"
  local pipe = assert(io.popen(string.format("exec timeout --foreground %d %s %s --port 0 --calls %d 2>%s",
    LIFETIME, CFG.lua, sh_quote(SERVER), calls, sh_quote(log))))
  local server = { pipe = pipe, calls = calls, name = name }
  started[#started + 1] = server
  return server
end

-- Waits for a server's "listening" line.
local function ready(server)
  local line = server.pipe:read("l") or ""
  local url, pid = line:match("listening on (http://%S+) pid=(%d+)")
  assert(url, "server " .. server.name .. " did not start: " .. read_file(CFG.build .. "/server-" .. server.name .. ".log"))
  server.url, server.pid = url, tonumber(pid)
  return server
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local NGINX_CONF = [[
# Written by bench/run.lua: a TLS-terminating proxy in front of the local server.
daemon off;
master_process off;     # one process that serves (like one worker), stopped by its pid
pid %s/nginx.pid;
error_log %s/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %s/tmp; proxy_temp_path %s/tmp; fastcgi_temp_path %s/tmp;
  uwsgi_temp_path %s/tmp; scgi_temp_path %s/tmp;
  upstream osvi { server %s; keepalive 32; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:%d ssl;
    ssl_certificate %s/cert.pem;
    ssl_certificate_key %s/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://osvi;
      proxy_http_version 1.1;
      proxy_set_header Connection "";   # keep-alive to the upstream
      proxy_buffer_size 16k; proxy_buffers 16 16k;  # a whole page in memory, no temp files
    }
  }
}
]]

-- A self-signed certificate for 127.0.0.1 and nginx in front of `upstream` (a server).
local function start_nginx(upstream)
  local dir = CFG.build .. "/nginx"
  assert(os.execute("mkdir -p " .. sh_quote(dir .. "/tmp")))
  assert(os.execute(string.format("openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=127.0.0.1 "
    .. "-addext subjectAltName=IP:127.0.0.1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1",
    sh_quote(dir), sh_quote(dir))), "openssl req failed")
  local port = free_port()
  local f = assert(io.open(dir .. "/nginx.conf", "w"))
  f:write(string.format(NGINX_CONF, dir, dir, dir, dir, dir, dir, dir,
    upstream.url:match("^http://(.*)$"), port, dir, dir))
  f:close()
  os.remove(dir .. "/nginx.pid")
  local pipe = assert(io.popen(string.format("exec timeout --foreground %d nginx -p %s -c %s/nginx.conf -e %s/nginx-error.log 2>&1",
    LIFETIME, sh_quote(dir), sh_quote(dir), sh_quote(dir))))
  local proxy = { pipe = pipe, name = "nginx", url = "https://127.0.0.1:" .. port, ca = dir .. "/cert.pem" }
  started[#started + 1] = proxy
  for _ = 1, 100 do
    local c = socket.connect("127.0.0.1", port)
    if c then c:close() break end
    socket.sleep(0.05)
  end
  proxy.pid = tonumber(read_file(dir .. "/nginx.pid"):match("%d+"))
  assert(proxy.pid, "nginx did not start: " .. read_file(dir .. "/nginx-error.log"))
  return proxy
end

local function stop_all()
  for _, p in ipairs(started) do
    if p.pid then os.execute("kill " .. p.pid .. " 2>/dev/null") end
    p.pipe:close()
  end
  started = {}
end

------------------------------------------------------------------------------
-- Talking to a server's control API
------------------------------------------------------------------------------

local function control(server, path, body)
  local chunks = {}
  local ok, code = http.request {
    url = server.url .. path, method = body and "POST" or "GET",
    source = body and ltn12.source.string(body),
    headers = body and { ["content-length"] = #body, ["content-type"] = "application/json" },
    sink = ltn12.sink.table(chunks),
  }
  assert(ok and code == 200, path .. ": " .. tostring(code))
  return table.concat(chunks)
end

-- What every contender must print for this server: count and checksum of all its calls.
local function expected_line(server)
  local sum = new_checksum()
  for _, call in ipairs(cjson.decode(control(server, "/_control/calls")).data) do sum:add(call.call_id) end
  return sum:line()
end

------------------------------------------------------------------------------
-- One measured run
------------------------------------------------------------------------------

-- Runs argv under rusage with `vars` added to the environment. Returns
-- { wall, cpu, rss_kib, status, check, unavailable, error, out }.
local function run(argv, vars)
  local words = { sh_quote(RUSAGE), "env" }
  for k, v in pairs(vars) do words[#words + 1] = sh_quote(k .. "=" .. v) end
  for _, a in ipairs(argv) do words[#words + 1] = sh_quote(a) end
  local errfile = CFG.build .. "/stderr.txt"
  local pipe = assert(io.popen(table.concat(words, " ") .. " 2>" .. sh_quote(errfile)))
  local out = pipe:read("a")
  pipe:close()
  local r = { out = out }
  local wall, user, sys, rss, status = out:match("rusage (%S+) (%S+) (%S+) (%d+) (%d+)%s*$")
  if not wall then
    r.error = "no rusage line: " .. out .. read_file(errfile)
    return r
  end
  r.wall, r.cpu, r.rss, r.status = tonumber(wall), tonumber(user) + tonumber(sys), tonumber(rss), tonumber(status)
  r.check = out:match("(count=%d+ checksum=%x+)") or out:match("(pages=%d+) bytes=%d+")
  r.unavailable = r.status == 3 and out:match("unavailable: ([^\n]*)") or nil
  if r.status ~= 0 and not r.unavailable then
    r.error = string.format("exit status %d: %s", r.status, read_file(errfile):sub(-600))
  end
  return r
end

------------------------------------------------------------------------------
-- Contenders, floors and workloads
------------------------------------------------------------------------------

local CONTENDERS = {
  { id = "luasocket", script = "luasocket.lua", label = "luasocket socket.http + lua-cjson",
    https_label = "luasocket + LuaSec ssl.https + lua-cjson", closes = true, slow_on = "https" },
  { id = "curl", script = "curl_cli.lua", label = "curl command per page (io.popen) + lua-cjson",
    slow_on = "loopback latency https" },
  { id = "osvi-seq", script = "osvi_seq.lua", label = "osvi, prefetch = 0" },
  { id = "osvi-best", script = "osvi_best.lua", label = "osvi, prefetch = " .. CFG.prefetch,
    parallel = true },
}

local WORKLOADS = {
  { id = "loopback", title = string.format("%s calls, %d per page, loopback, no added latency",
      thousands(CFG.calls), CFG.per_page) },
  { id = "latency", title = string.format("%s calls, %d per page, loopback, %d ms added per request",
      thousands(CFG.calls), CFG.per_page, CFG.latency_ms), latency = true },
  { id = "https", title = string.format("%s calls, %d per page, HTTPS (nginx TLS proxy, RSA-2048)",
      thousands(CFG.calls), CFG.per_page), https = true },
  { id = "rss", title = string.format("peak RSS: %s calls (compare with the loopback table's %s)",
      thousands(CFG.small_calls), thousands(CFG.calls)), small = true },
}

local unavailable = {} -- contender id -> message
local failures = {}    -- text lines

-- The jobs of one workload: { id, label, argv, vars, reps, expect, servers (pids to watch) }.
local function jobs_for(w, S)
  local pages = ((w.small and CFG.small_calls or CFG.calls) + CFG.per_page - 1) // CFG.per_page
  local jobs = {}
  local function base(closes) -- the URL, CA file and pids serving a job
    if w.small then return S.small.url, nil, { S.small.pid } end
    if w.https then return S.nginx.url, S.nginx.ca, { S.main.pid, S.nginx.pid } end
    local server = closes and S.close or S.main
    return server.url, nil, { server.pid }
  end
  for _, c in ipairs(CONTENDERS) do
    if selected(CFG.contenders, c.id) and (not w.small or c.id:match("^osvi")) then
      local url, ca, pids = base(c.closes)
      jobs[#jobs + 1] = {
        id = c.id, label = w.https and c.https_label or c.label, parallel = c.parallel,
        argv = { CFG.lua, HERE .. "/contenders/" .. c.script },
        vars = { OSVI_BASE_URL = url, OSVI_API_TOKEN = TOKEN, BENCH_PER_PAGE = CFG.per_page,
                 BENCH_CA_FILE = ca or "", BENCH_PREFETCH = CFG.prefetch,
                 LUA_PATH = HERE .. "/contenders/?.lua;;", LUA_CPATH = CFG.cpath .. ";;" },
        reps = (selected(c.slow_on or "", w.id) or (w.latency and not c.parallel)) and CFG.slow_reps or CFG.reps,
        expect = w.small and S.small.expect or S.main.expect, pids = pids, results = {},
      }
    end
  end
  if not w.small then
    for _, in_flight in ipairs { 1, IN_FLIGHT } do
      local url, ca, pids = base(false)
      jobs[#jobs + 1] = {
        id = in_flight == 1 and "floor-b" or "floor-bN", parallel = in_flight > 1,
        label = string.format("(b) transfer floor: C libcurl, keep-alive, %d in flight", in_flight),
        argv = { FLOOR_TRANSFER, url, TOKEN, pages, CFG.per_page, in_flight, ca },
        -- one run at added latency: it is PAGES x (latency + a fraction of a ms), near exactly
        vars = {}, reps = (w.latency and in_flight == 1) and 1 or CFG.reps,
        expect = "pages=" .. pages, pids = pids, results = {},
      }
    end
  end
  return jobs
end

-- Runs the jobs round-robin: repetition 1 of every job, then repetition 2, ...
local function run_jobs(w, jobs)
  local most = 0
  for _, j in ipairs(jobs) do most = math.max(most, j.reps) end
  for rep = 1, most do
    for _, j in ipairs(jobs) do
      if rep <= j.reps and not j.failed and not unavailable[j.id] then
        local before = {}
        for i, pid in ipairs(j.pids) do before[i] = cpu_of(pid) end
        local r = run(j.argv, j.vars)
        r.server_cpu = 0
        for i, pid in ipairs(j.pids) do r.server_cpu = r.server_cpu + cpu_of(pid) - before[i] end
        if r.unavailable then
          unavailable[j.id] = r.unavailable
        elseif r.error then
          j.failed = r.error
        elseif r.check ~= j.expect then
          j.failed = string.format("read the wrong calls: got '%s', want '%s'", tostring(r.check), j.expect)
        else
          j.results[#j.results + 1] = r
        end
        if j.failed then failures[#failures + 1] = string.format("%s / %s: %s", w.id, j.id, j.failed) end
        io.stderr:write(string.format("  %-9s %-10s run %d/%d  %s\n", w.id, j.id, rep, j.reps,
          unavailable[j.id] and "not available" or j.failed and "FAILED" or string.format("%.3f s", r.wall)))
      end
    end
  end
  for _, j in ipairs(jobs) do
    local walls, cpus, rsss, loads = {}, {}, {}, {}
    for i, r in ipairs(j.results) do
      walls[i], cpus[i], rsss[i], loads[i] = r.wall, r.cpu, r.rss, r.server_cpu / r.wall
    end
    j.walls, j.wall, j.cpu, j.rss, j.load = walls, median(walls), median(cpus), median(rsss), median(loads)
  end
end

------------------------------------------------------------------------------
-- Output
------------------------------------------------------------------------------

local out_lines = {}
local function say(fmt, ...)
  local line = select("#", ...) > 0 and string.format(fmt, ...) or fmt
  io.stdout:write(line, "\n")
  io.stdout:flush()
  out_lines[#out_lines + 1] = line
end

local function ratio(a, b)
  if not a or not b then return "—" end
  return string.format("%.2f×", a / b)
end

local TABLE_HEAD = "| contender | runs | wall s | wall range | CPU s | calls/s | peak RSS MiB | server CPU | wall / osvi-seq | wall / osvi-best |"
local TABLE_RULE = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"

-- "min–max" of a list of walls, or "" for fewer than two.
local function range(walls)
  if not walls or #walls < 2 then return "" end
  return string.format("%.2f–%.2f", math.min(table.unpack(walls)), math.max(table.unpack(walls)))
end

local function row(label, runs, wall, walls, cpu, calls, rss_kib, load, seq, best)
  say("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |", label, runs,
    wall and string.format("%.3f", wall) or "—", range(walls), cpu and string.format("%.3f", cpu) or "—",
    wall and thousands(calls / wall) or "—", rss_kib and string.format("%.1f", rss_kib / 1024) or "—",
    load and string.format("%.0f%%", load * 100) or "—", ratio(wall, seq), ratio(wall, best))
end

local function find(jobs, id)
  for _, j in ipairs(jobs) do if j.id == id then return j end end
end

-- Prints a workload's table; returns its medians by id (wall) and the two floors.
local function report(w, jobs, decode)
  local seq, best = find(jobs, "osvi-seq"), find(jobs, "osvi-best")
  seq, best = seq and seq.wall, best and best.wall
  local calls = w.small and CFG.small_calls or CFG.calls
  say("")
  say("### %s", w.title)
  say("")
  say(TABLE_HEAD)
  say(TABLE_RULE)
  for _, j in ipairs(jobs) do
    if unavailable[j.id] then
      say("| %s | — | not available: %s | | | | | | | |", j.label, unavailable[j.id])
    elseif j.failed then
      say("| %s | — | FAILED: %s | | | | | | | |", j.label, (j.failed:match("^[^\n]*"):gsub("|", "/")))
    else
      row(j.label, #j.results, j.wall, j.walls, j.cpu, calls, j.rss, j.load, seq, best)
    end
  end
  local floors = {}
  if not w.small and decode then
    local b, bn = find(jobs, "floor-b"), find(jobs, "floor-bN")
    row("(a) decode floor: lua-cjson in-process, no network¹", #decode.walls, decode.wall, decode.walls, decode.cpu,
      calls, nil, nil, seq, best)
    if b.wall then
      floors.seq = decode.wall + b.wall
      row("**floor, sequential: (a) + (b)**", "", floors.seq, nil, nil, calls, nil, nil, seq, best)
    end
    if bn.wall then
      floors.par = math.max(decode.wall, bn.wall)
      row("**floor, prefetching: max((a), (b, " .. IN_FLIGHT .. " in flight))**", "", floors.par, nil, nil, calls,
        nil, nil, seq, best)
    end
  end
  return floors
end

------------------------------------------------------------------------------
-- Main
------------------------------------------------------------------------------

local function machine()
  local osvi = capture(string.format("LUA_CPATH=%s %s -e 'print(require(\"osvi\")._VERSION)' 2>/dev/null",
    sh_quote(CFG.cpath .. ";;"), CFG.lua))
  return {
    string.format("- machine: %s cores, %s, kernel %s", capture("nproc"),
      read_file("/proc/cpuinfo"):match("model name%s*:%s*([^\n]+)") or "?", capture("uname -r")),
    string.format("- %s, %s, lua-cjson %s, %s, LuaSec %s, curl %s, nginx %s, %s",
      capture(CFG.lua .. " -v"):match("^Lua %S+") or "Lua ?", capture("curl-config --version"),
      cjson._VERSION, socket._VERSION, capture(CFG.lua .. " -e 'print(require(\"ssl\")._VERSION)'"),
      capture("curl --version"):match("^curl (%S+)") or "?",
      capture("nginx -v 2>&1"):match("nginx/(%S+)") or "?", osvi ~= "" and osvi or "osvi ?"),
    string.format("- load average (1, 5, 15 min) at the start: %s", read_file("/proc/loadavg"):match("^%S+ %S+ %S+")),
    string.format("- settings: BENCH_REPS=%d BENCH_SLOW_REPS=%d BENCH_PREFETCH=%d BENCH_CALLS=%d "
      .. "BENCH_SMALL_CALLS=%d BENCH_PER_PAGE=%d BENCH_LATENCY_MS=%d",
      CFG.reps, CFG.slow_reps, CFG.prefetch, CFG.calls, CFG.small_calls, CFG.per_page, CFG.latency_ms),
  }
end

local function main()
  local t0 = socket.gettime()
  assert(os.execute("mkdir -p " .. sh_quote(CFG.build)))
  local S = {}
  -- Three servers with the same seed: `main` for clients that keep connections alive, `close`
  -- for socket.http's Connection: close requests (the server caches whole responses per
  -- keep-alive flag, in one 64 MiB budget, which two copies of 100,000 calls would overflow),
  -- and `small` for the RSS comparison.
  S.main, S.close = start_server(CFG.calls, "main"), start_server(CFG.calls, "close")
  S.small = start_server(CFG.small_calls, "small")
  for _, s in ipairs { S.main, S.close, S.small } do ready(s); s.expect = expected_line(s) end
  if selected(CFG.workloads, "https") then S.nginx = start_nginx(S.main) end

  say("## osvi benchmark — %s", os.date("!%Y-%m-%d %H:%M UTC"))
  say("")
  for _, line in ipairs(machine()) do say(line) end
  io.stderr:write("servers ready (", string.format("%.1f", socket.gettime() - t0), " s)\n")

  -- The decode floor: fetch the pages once (from `close`, which warms its cache), decode them
  -- CFG.reps times in-process; the same bodies serve every 100,000-call workload.
  local decode
  if selected(CFG.workloads, "loopback") or selected(CFG.workloads, "latency") or selected(CFG.workloads, "https") then
    local r = run({ CFG.lua, HERE .. "/floor_decode.lua", CFG.reps },
      { OSVI_BASE_URL = S.close.url, OSVI_API_TOKEN = TOKEN, BENCH_PER_PAGE = CFG.per_page,
        LUA_PATH = HERE .. "/contenders/?.lua;;" })
    if r.error or r.check ~= S.main.expect then
      failures[#failures + 1] = "decode floor: " .. (r.error or ("read the wrong calls: " .. tostring(r.check)))
    else
      decode = { walls = {}, cpus = {} }
      for wall, cpu in r.out:gmatch("decode (%S+) (%S+)") do
        decode.walls[#decode.walls + 1], decode.cpus[#decode.cpus + 1] = tonumber(wall), tonumber(cpu)
      end
      decode.wall, decode.cpu = median(decode.walls), median(decode.cpus)
    end
  end
  -- Warm the other servers' response caches with one untimed pass.
  for _, s in ipairs { S.main, S.small } do
    run({ FLOOR_TRANSFER, s.url, TOKEN, (s.calls + CFG.per_page - 1) // CFG.per_page, CFG.per_page, 1 }, {})
  end

  local results = {}
  for _, w in ipairs(WORKLOADS) do
    if selected(CFG.workloads, w.id) then
      local jobs = jobs_for(w, S)
      if w.latency then
        for _, s in ipairs { S.main, S.close } do control(s, "/_control/config", '{"latency_ms":' .. CFG.latency_ms .. '}') end
      end
      local tw = socket.gettime()
      run_jobs(w, jobs)
      io.stderr:write(string.format("%s done in %.0f s\n", w.id, socket.gettime() - tw))
      if w.latency then
        for _, s in ipairs { S.main, S.close } do control(s, "/_control/config", '{"latency_ms":0}') end
      end
      results[w.id] = { w = w, jobs = jobs }
    end
  end

  -- Tables
  local floors = {}
  for _, w in ipairs(WORKLOADS) do
    local r = results[w.id]
    if r then floors[w.id] = report(w, r.jobs, decode) end
  end
  say("")
  say("Medians over the runs shown. CPU = user+sys of the contender's process and the children it")
  say("waited for (the curl processes). server CPU = CPU time of the local server (and of nginx for")
  say("HTTPS) during the run, as a share of the run's wall time. Ratios > 1 mean slower than osvi.")
  say("¹ timed inside one process over the same %d page bodies, fetched once beforehand; CPU is the", CFG.calls // CFG.per_page)
  say("  process's own; no RSS (it holds every body). One measurement, shown in each %s-call table.", thousands(CFG.calls))

  -- The server alone
  local lb = results.loopback
  if lb then
    local b, bn = find(lb.jobs, "floor-b"), find(lb.jobs, "floor-bN")
    local pages = CFG.calls // CFG.per_page
    if b.wall and bn.wall then
      say("")
      say("Server alone (the transfer floor on the loopback workload, per_page=%d): %s pages/s with 1 in flight "
        .. "(server CPU %.0f%%), %s pages/s with %d in flight (server CPU %.0f%%).",
        CFG.per_page, thousands(pages / b.wall), b.load * 100, thousands(pages / bn.wall), IN_FLIGHT, bn.load * 100)
    end
  end

  -- Targets
  say("")
  say("### Targets")
  say("")
  say("| target | measured | result |")
  say("|---|---:|---|")
  local function target(name, value, pass_if, goal)
    if type(value) == "string" then
      say("| %s | — | %s |", name, value)
    else
      say("| %s | %.2f (%s) | %s |", name, value, goal, pass_if(value) and "PASS" or "MISS")
    end
  end
  local function wall_of(wid, id)
    local r = results[wid]
    local j = r and find(r.jobs, id)
    if not j then return nil, "not run" end
    if unavailable[id] then return nil, "n/a: " .. id .. " not available" end
    if not j.wall then return nil, "n/a: " .. id .. " failed" end
    return j.wall, j
  end
  local function check(name, goal, pass_if, f)
    local ok, v = pcall(f)
    target(name, ok and v or tostring(v), pass_if, goal)
  end
  local function need(v, why) if not v then error(why, 0) end return v, why end
  local le = function(limit) return function(v) return v <= limit end end
  local ge = function(limit) return function(v) return v >= limit end end

  if results.loopback then
    check("no latency: osvi-best / floor (prefetching)", "≤ 1.10", le(1.1), function()
      return need(wall_of("loopback", "osvi-best")) / need(floors.loopback.par, "n/a: floor failed") end)
    check("no latency: fastest other contender / osvi-best", "> 1.00", function(v) return v > 1 end, function()
      local best = need(wall_of("loopback", "osvi-best"))
      local fastest = math.huge
      for _, id in ipairs { "luasocket", "curl", "osvi-seq" } do
        fastest = math.min(fastest, wall_of("loopback", id) or math.huge)
      end
      return fastest / best end)
    check("no latency (for information): osvi-seq / floor (sequential)", "≤ 1.10", le(1.1), function()
      return need(wall_of("loopback", "osvi-seq")) / need(floors.loopback.seq, "n/a: floor failed") end)
  end
  if results.latency then
    check(CFG.latency_ms .. " ms latency: fastest sequential contender / osvi-best", "≥ 5.00", ge(5), function()
      local best = need(wall_of("latency", "osvi-best"))
      local fastest = math.huge
      for _, id in ipairs { "luasocket", "curl", "osvi-seq" } do
        fastest = math.min(fastest, wall_of("latency", id) or math.huge)
      end
      return fastest / best end)
  end
  if results.https then
    for _, id in ipairs { "osvi-seq", "osvi-best" } do
      check("HTTPS: luasocket+LuaSec / " .. id, "≥ 2.00", ge(2), function()
        return need(wall_of("https", "luasocket")) / need(wall_of("https", id)) end)
    end
  end
  if results.rss and results.loopback then
    for _, id in ipairs { "osvi-seq", "osvi-best" } do
      check(string.format("peak RSS: %s, %s calls / %s calls", id, thousands(CFG.calls), thousands(CFG.small_calls)),
        "≤ 1.10", le(1.1),
        function()
          local big, small = select(2, need(wall_of("loopback", id))), select(2, need(wall_of("rss", id)))
          return big.rss / small.rss end)
    end
  end
  for id, msg in pairs(unavailable) do
    say("")
    say("%s not available: %s", id, msg)
  end
  if #failures > 0 then
    say("")
    say("FAILURES:")
    for _, f in ipairs(failures) do say("- %s", f) end
  end
  say("")
  say("Load average at the end: %s. Command: `make -f bench/bench.mk bench`; total time %.0f s.",
    read_file("/proc/loadavg"):match("^%S+ %S+ %S+"), socket.gettime() - t0)
  local f = io.open(CFG.build .. "/results.md", "w")
  if f then f:write(table.concat(out_lines, "\n"), "\n") f:close() end
  return #failures == 0
end

local ok, result = xpcall(main, debug.traceback)
stop_all()
if not ok then
  io.stderr:write("bench: ", tostring(result), "\n")
  os.exit(2)
end
os.exit(result and 0 or 1)
