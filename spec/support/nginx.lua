-- Spec helper: Debian's nginx with its Lua module (OpenResty's LuaJIT), started on free ports
-- of 127.0.0.1 under a temporary prefix, running resty.osvi as `make install` installs it, with
-- the handlers of spec/support/resty_harness.lua. Also makes test CAs and certificates, and
-- TLS servers (nginx itself, proxying to a local OSVI server) that use them.
--
--   local N = require "spec.support.nginx"
--   local why = N.unavailable()          -- nil, or why nginx cannot run here (a pending spec)
--   local pki = N.pki()                   -- {dir, ca, ca2, ...}: made with openssl
--   local ngx = N.start { upstream = server, pki = pki, env = { OSVI_API_TOKEN = ... } }
--   local answer = ngx:run { op = "calls", options = {...}, filters = {...} }
--   ngx:stop()
--
-- Runs on every Lua the specs run on (5.4, 5.3, 5.1, LuaJIT): luasocket and lua-cjson only.
local socket = require "socket"
local cjson = require "cjson"

local M = {}

M.LIFETIME = 1800 -- seconds: nginx stops by itself after this, whatever happens to the spec
M.MODULE = "/usr/lib/nginx/modules/ngx_http_lua_module.so"
M.NDK = "/usr/lib/nginx/modules/ndk_http_module.so"
-- the Makefile's LuaJIT build, as its test-luajit target and VERSION_ARGS_luajit make it
M.MAKE_ARGS = "LUA_VERSION=5.1 LUA_INCDIR=/usr/include/luajit-2.1 LUA=luajit BUILD=build/luajit"

local function execute(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local function read_file(name)
  local f = io.open(name)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(name, text)
  local f = assert(io.open(name, "w"))
  f:write(text)
  f:close()
end

local function capture(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("*a")
  p:close()
  return out
end

local function sh(cmd)
  local out = capture("{ " .. cmd .. "; } 2>&1; echo \"@@rc=$?\"")
  local body, rc = out:match("^(.-)@@rc=(%d+)\n?$")
  assert(rc == "0", cmd .. " failed:\n" .. tostring(body or out))
  return body
end

--- nil when nginx and its Lua module are here, else the reason (for a pending spec).
function M.unavailable()
  if not execute("command -v nginx >/dev/null 2>&1") then return "nginx is not installed" end
  if not io.open(M.MODULE) then return "libnginx-mod-http-lua is not installed (" .. M.MODULE .. ")" end
  if not execute("command -v openssl >/dev/null 2>&1") then return "openssl is not installed" end
  return nil
end

local function tmpdir()
  local dir = os.tmpname()
  os.remove(dir)
  sh("mkdir -p " .. dir .. " && chmod 755 " .. dir)
  return dir
end

--- A free port of 127.0.0.1 (bound by the system, then closed).
function M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

--- Installs osvi (build/luajit/osvi.so, built when out of date, and resty.osvi) with
--- `make install` into a directory of its own, as a user would: returns the lua_package_cpath
--- and lua_package_path entries for it.
function M.install(dir)
  sh(string.format("make --no-print-directory -s install %s DESTDIR=%s INST_LIBDIR=/lib "
    .. "INST_LUADIR=/share INST_BINDIR=/bin >/dev/null", M.MAKE_ARGS, dir))
  assert(io.open(dir .. "/lib/osvi.so"), "make install did not install osvi.so")
  assert(io.open(dir .. "/share/resty/osvi.lua"), "make install did not install resty/osvi.lua")
  assert(io.open(dir .. "/share/resty/osvi/http.lua"), "make install did not install resty/osvi/http.lua")
  return dir .. "/lib/?.so", dir .. "/share/?.lua"
end

--- Test CAs and certificates (EC P-256, a day): `ca` signs `good` (127.0.0.1) and `wrong`
--- (wrong.test only); `ca2`, trusted by nobody, signs `untrusted` (127.0.0.1).
function M.pki()
  local dir = tmpdir()
  local key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1"
  local function ca(name)
    sh(string.format("openssl req -x509 %s -subj /CN=osvi-test-%s -keyout %s/%s.key -out %s/%s.pem",
      key, name, dir, name, dir, name))
  end
  local function leaf(name, cn, san, by)
    sh(string.format("openssl req -x509 %s -subj /CN=%s -addext subjectAltName=%s "
      .. "-addext basicConstraints=critical,CA:FALSE -CA %s/%s.pem -CAkey %s/%s.key -keyout %s/%s.key -out %s/%s.pem",
      key, cn, san, dir, by, dir, by, dir, name, dir, name))
  end
  ca("ca")
  ca("ca2")
  leaf("good", "127.0.0.1", "IP:127.0.0.1", "ca")
  leaf("wrong", "wrong.test", "DNS:wrong.test", "ca")
  leaf("untrusted", "127.0.0.1", "IP:127.0.0.1", "ca2")
  return { dir = dir, ca = dir .. "/ca.pem", ca2 = dir .. "/ca2.pem" }
end

function M.remove_pki(pki)
  if pki then execute("rm -rf '" .. pki.dir .. "'") end
end

local CONF = [[
# written by spec/support/nginx.lua
worker_processes 1;
daemon off;
pid nginx.pid;
error_log error.log info;
env OSVI_API_TOKEN;
env OSVI_BASE_URL;
load_module @NDK@;
load_module @MODULE@;
events { worker_connections 4096; }
http {
    access_log access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;

    # osvi as `make install` put it, Debian's 5.1 modules (cjson), then the defaults
    lua_package_cpath "@CPATH@;/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;";
    lua_package_path "@LPATH@;@HARNESS@/?.lua;/usr/share/lua/5.1/?.lua;;";
    lua_ssl_trusted_certificate @CA@;
    lua_ssl_verify_depth 2;
    lua_shared_dict harness 1m;
    client_body_buffer_size 1m;
    client_max_body_size 1m;

    server {
        listen 127.0.0.1:@PORT@;
        location = /run { content_by_lua_block { require("resty_harness").run() } }
        location = /timer { content_by_lua_block { require("resty_harness").timer() } }
        location = /timer/result { content_by_lua_block { require("resty_harness").timer_result() } }
        location = /thread { content_by_lua_block { require("resty_harness").thread() } }
        location = /ping { content_by_lua_block { require("resty_harness").ping() } }
        location = /pid { content_by_lua_block { require("resty_harness").pid() } }
    }

    # TLS in front of the local OSVI server: every connection and request logged
    log_format tls '$server_port $connection $connection_requests $request_uri';
    upstream osvi_api { server @UPSTREAM@; keepalive 16; }
@TLS@
@EXTRA@
}
]]

local TLS_SERVER = [[
    server {
        listen 127.0.0.1:%d ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        access_log tls.log tls;
        location / {
            proxy_pass http://osvi_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
]]

local Nginx = {}
Nginx.__index = Nginx

--- Starts nginx: opts.upstream (a server of spec/support/helper.lua, for the TLS servers),
--- opts.pki (M.pki()), opts.env (environment variables for nginx), opts.extra (more lines for
--- the http block). Returns the object, with
--- .url, .port, .prefix, .tls = {good = url, wrong = url, untrusted = url}.
function M.start(opts)
  local root = capture("pwd"):gsub("%s+$", "")
  local prefix = tmpdir()
  sh("mkdir -p " .. prefix .. "/tmp " .. prefix .. "/osvi")
  local cpath, lpath = M.install(prefix .. "/osvi")
  -- the handlers, beside it: nginx's worker runs as nobody when started by root, and the tree
  -- under test may be in a directory only its owner can enter (mktemp -d makes them 0700)
  sh("mkdir -p " .. prefix .. "/harness && cp " .. root .. "/spec/support/resty_harness.lua " .. prefix .. "/harness/")
  local pki = opts.pki
  local last_err
  for _ = 1, 3 do -- a port taken meanwhile: again with others
    local port = M.free_port()
    local tls, servers = {}, {}
    for _, name in ipairs { "good", "wrong", "untrusted" } do
      local p = M.free_port()
      tls[name] = "https://127.0.0.1:" .. p
      servers[#servers + 1] = string.format(TLS_SERVER, p, pki.dir .. "/" .. name .. ".pem",
        pki.dir .. "/" .. name .. ".key")
    end
    local conf = CONF:gsub("@(%u+)@", {
      NDK = M.NDK, MODULE = M.MODULE, CPATH = cpath, LPATH = lpath, HARNESS = prefix .. "/harness", CA = pki.ca,
      PORT = tostring(port), UPSTREAM = opts.upstream.host .. ":" .. opts.upstream.port,
      TLS = table.concat(servers), EXTRA = opts.extra or "",
    })
    write_file(prefix .. "/nginx.conf", conf)
    os.remove(prefix .. "/nginx.pid")
    local envs = ""
    for k, v in pairs(opts.env or {}) do envs = envs .. string.format("%s='%s' ", k, v) end
    local pipe = io.popen(string.format("exec env %s timeout --foreground %d nginx -p %s -c %s/nginx.conf "
      .. "-e %s/error.log >%s/stderr 2>&1", envs, M.LIFETIME, prefix, prefix, prefix, prefix))
    local self = setmetatable({ pipe = pipe, prefix = prefix, port = port, tls = tls,
                                url = "http://127.0.0.1:" .. port }, Nginx)
    for _ = 1, 100 do
      local c = socket.connect("127.0.0.1", port)
      if c then
        c:close()
        local pid = read_file(prefix .. "/nginx.pid")
        self.pid = pid and tonumber(pid:match("%d+"))
        if self.pid then return self end
      end
      socket.sleep(0.05)
    end
    last_err = (read_file(prefix .. "/stderr") or "") .. (read_file(prefix .. "/error.log") or "")
    self:stop(true)
  end
  execute("rm -rf '" .. prefix .. "'")
  error("nginx did not start: " .. tostring(last_err))
end

--- Stops nginx (and removes its prefix unless keep).
function Nginx:stop(keep)
  if self.pipe then
    if self.pid then execute("kill -QUIT " .. self.pid .. " 2>/dev/null") end
    -- the pipe closes when nginx (and timeout) exit
    self.pipe:close()
    self.pipe = nil
  end
  if not keep then execute("rm -rf '" .. self.prefix .. "'") end
end

--- nginx's error log so far.
function Nginx:error_log() return read_file(self.prefix .. "/error.log") or "" end
--- The TLS servers' log lines so far: {port, connection, requests of it, uri}.
function Nginx:tls_log()
  local lines = {}
  for line in (read_file(self.prefix .. "/tls.log") or ""):gmatch("[^\n]+") do
    local port, conn, n, uri = line:match("^(%d+) (%d+) (%d+) (%S+)")
    lines[#lines + 1] = { port = tonumber(port), connection = tonumber(conn), requests = tonumber(n), uri = uri }
  end
  return lines
end

--- Sends one request (HTTP/1.0: nginx answers with a length or a close); returns the
--- connected socket, to be read with read_response. Raises when nginx cannot be reached.
function Nginx:send(method, path, body)
  local c = assert(socket.connect("127.0.0.1", self.port))
  c:settimeout(120)
  c:setoption("tcp-nodelay", true)
  body = body or ""
  assert(c:send(string.format("%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s",
    method, path, #body, body)))
  return c
end

--- Reads the answer of a socket from send(): status, body.
function M.read_response(c)
  local text = c:receive("*a")
  c:close()
  local status = tonumber((text or ""):match("^HTTP/1%.%d (%d%d%d)"))
  local body = text and text:match("\r\n\r\n(.*)$")
  return status, body
end

function Nginx:request(method, path, body)
  return M.read_response(self:send(method, path, body))
end

--- POST /run (or another path) with a job; returns the decoded answer. Fails unless a 200.
function Nginx:run(job, path)
  local status, body = self:request("POST", path or "/run", cjson.encode(job))
  assert(status == 200, "nginx answered " .. tostring(status) .. ": " .. tostring(body)
    .. "\n" .. self:error_log():sub(-3000))
  return cjson.decode(body)
end

--- The worker's pid.
function Nginx:worker_pid()
  local status, body = self:request("GET", "/pid")
  assert(status == 200, "GET /pid: " .. tostring(status))
  return math.floor(cjson.decode(body).pid)
end

return M
