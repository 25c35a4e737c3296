--[[
resty.osvi.http -- the small HTTP/1.1 client resty.osvi needs, on nginx's cosockets.

One GET at a time per call, never blocking the worker: every wait is a cosocket yield.

  local http = require "resty.osvi.http"
  local target = assert(http.target("https://api.osvi.ai"))
  local res, kind, message, retryable, sends, status = http.get(target, request_bytes, {
    timeout = 30, connect_timeout = 10, stall_timeout = 15, max_bytes = 32 * 1024 * 1024,
    keepalive_timeout = 60, keepalive_pool = 16,
  }, budget)
  -- res = {status =, body =, retry_after = (the header as received, or nil), sends =, reused =}

What it does, and what it leaves to the caller (resty.osvi, and under it osvi's paging core):
- Connections go back to nginx's keepalive pool (setkeepalive), one pool per scheme, host and
  port; a response read whole and not marked `Connection: close` keeps its connection.
- TLS by sslhandshake with SNI and verification always on (nginx's lua_ssl_trusted_certificate);
  a pooled TLS connection is not handshaken again.
- Content-Length, chunked, and read-until-close bodies; the body cap (max_bytes) is enforced as
  bytes arrive: a Content-Length over it is refused before the body, a chunked body is stopped at
  the chunk that would pass it. Headers are capped at 64 KiB.
- `timeout` bounds the whole attempt (connect, send, every read) and `connect_timeout` the connect;
  `stall_timeout`: under 64 bytes/s for that long is a timeout too (libcurl's low-speed rule).
- 3xx are answers like any other: never followed (the token must not reach another host).
- A kept-alive connection found dead before any byte of the answer (the server closed it while
  it was pooled) is re-sent once on a new connection, as libcurl does, if `budget` (the requests
  the core allows for this attempt) is not spent; `sends` says how many requests were sent.
- No retries, no decoding: a failure is (nil, kind, message, retryable, sends, status) with the
  kinds of osvi's libcurl transport (src/transport.c): refused, reset, empty reply and a body
  cut off are `network` and retryable; a timeout is `timeout`, retryable; a body over the cap is
  `too_large`, not retryable; DNS and TLS failures, and replies that are not HTTP, are `network`,
  not retryable.

The request bytes are the caller's (resty.osvi builds them once per client: they hold the token),
and never appear in a message here.
]]

local ngx = ngx
local tcp = ngx.socket.tcp
local now, update_time = ngx.now, ngx.update_time
local find, sub, lower, match, gmatch, byte = string.find, string.sub, string.lower, string.match,
  string.gmatch, string.byte
local concat = table.concat
local floor, min, max = math.floor, math.min, math.max
local tonumber = tonumber

local M = {}

local HEAD_MAX = 64 * 1024   -- bytes of status line and headers
local LINE_MAX = 4096        -- bytes of a chunk-size or trailer line
local READ_SIZE = 65536      -- the most asked of one receiveany()
local LOW_SPEED = 64         -- bytes per second: slower than that for stall_timeout is a timeout

--- The parts of a base URL that a request needs, or nil and a message.
--- {scheme, host (for connect, without brackets), port, host_header, prefix (path), tls, pool}
function M.target(url)
  local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
  scheme = scheme and lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "expected an http:// or https:// URL"
  end
  local authority, prefix = match(rest, "^([^/]*)(.*)$")
  if find(authority, "@", 1, true) then
    return nil, "user:password@ in the URL is not supported"
  end
  local host, port
  if sub(authority, 1, 1) == "[" then -- an IPv6 literal
    host, port = match(authority, "^%[([%x:.]+)%]:?(%d*)$")
  else
    host, port = match(authority, "^([^:]+):?(%d*)$")
  end
  if not host or host == "" then return nil, "expected a host name" end
  local default = scheme == "https" and 443 or 80
  local n = port ~= "" and tonumber(port) or default
  if n < 1 or n > 65535 then return nil, "expected a port from 1 to 65535" end
  while sub(prefix, -1) == "/" do prefix = sub(prefix, 1, -2) end
  local literal = find(host, ":", 1, true) and "[" .. host .. "]" or host
  return {
    scheme = scheme, host = host, port = n, prefix = prefix, tls = scheme == "https",
    host_header = n == default and literal or literal .. ":" .. n,
    pool = "osvi:" .. scheme .. ":" .. lower(host) .. ":" .. n,
  }
end

local function failure(kind, message, retryable, status)
  return { kind = kind, message = message, retryable = retryable, status = status }
end

-- Milliseconds for a cosocket timeout from seconds (at least 1).
local function ms(s)
  return max(1, floor(s * 1000 + 0.5))
end

-- A connection: the socket and what reading it needs.
local Conn = {}
Conn.__index = Conn

-- Waits for more bytes (at most n), within the attempt's deadline and the low-speed rule:
-- returns the bytes, or nil and "timeout", "closed" or the socket's error.
function Conn:more(n)
  update_time()
  local t = now()
  if self.stall and t - self.window_start >= self.stall then
    if self.window_bytes < LOW_SPEED * self.stall then return nil, "stalled" end
    self.window_start, self.window_bytes = t, 0
  end
  local left = self.deadline - t
  if left <= 0 then return nil, "timeout" end
  if self.stall then left = min(left, self.window_start + self.stall - t) end
  self.sock:settimeout(ms(left))
  local data, err = self.sock:receiveany(min(n or READ_SIZE, READ_SIZE))
  if not data then
    if err == "timeout" then
      -- the deadline, or the end of a low-speed window: looked at again
      return self:more(n)
    end
    return nil, err
  end
  self.got = self.got + #data
  self.window_bytes = self.window_bytes + #data
  return data
end

-- A read failure as (kind, message, retryable); `what` says where it happened.
local function read_failure(err, what, status)
  if err == "timeout" then
    return failure("timeout", "no complete answer within the timeout (" .. what .. ")", true, status)
  elseif err == "stalled" then
    return failure("timeout", "the answer came slower than " .. LOW_SPEED
      .. " bytes/s for stall_timeout (" .. what .. ")", true, status)
  elseif err == "closed" then
    return failure("network", "the connection closed " .. what, true, status)
  end
  return failure("network", err .. " (" .. what .. ")", true, status)
end

-- Reads the status line and headers: returns {status, version, headers = {lowercase name =
-- value}, rest = bytes after them}, or nil and a failure. Interim 1xx answers are skipped.
function Conn:head()
  local buf, from = "", 1
  while true do
    local s, e = find(buf, "\r?\n\r?\n", from)
    if s then
      local text = sub(buf, 1, s - 1)
      local version, status = match(text, "^HTTP/1%.(%d) (%d%d%d)")
      if not version then
        return nil, failure("network", "the server's reply is not HTTP/1.x", false)
      end
      status = tonumber(status)
      local headers = {}
      for line in gmatch(sub(text, (find(text, "\n", 1, true) or #text) + 1), "[^\r\n]+") do
        local name, value = match(line, "^([^:%s]+):[ \t]*(.-)[ \t]*$")
        if not name then
          return nil, failure("network", "the server's reply has a malformed header line", false, status)
        end
        name = lower(name)
        local seen = headers[name]
        if seen and name == "content-length" and seen ~= value then
          return nil, failure("network", "the server's reply has two different Content-Length", false, status)
        end
        headers[name] = seen and name ~= "content-length" and seen .. ", " .. value or value
      end
      buf = sub(buf, e + 1)
      if status >= 200 or status == 101 then
        return { status = status, version = tonumber(version), headers = headers, rest = buf }
      end
      from = 1 -- 100 Continue and friends: the real answer follows
    else
      if #buf > HEAD_MAX then
        return nil, failure("network", "the server's reply headers are over " .. HEAD_MAX .. " bytes", false)
      end
      from = max(1, #buf - 3)
      local data, err = self:more()
      if not data then
        if err == "closed" and self.got == 0 then return nil, "empty" end
        return nil, read_failure(err, self.got == 0 and "before any answer" or "in the reply headers")
      end
      buf = buf .. data
    end
  end
end

-- Reads a body of `length` bytes that begins with `rest`: the body, or nil and a failure.
function Conn:fixed(length, rest, status)
  local pieces, n, have = { rest }, 1, #rest
  while have < length do
    local data, err = self:more(length - have)
    if not data then
      return nil, read_failure(err, "after " .. have .. " of " .. length .. " body bytes", status)
    end
    n = n + 1
    pieces[n] = data
    have = have + #data
  end
  local body = n == 1 and rest or concat(pieces, "", 1, n)
  if have > length then
    self.extra = true -- bytes past the body: not an answer to trust the connection with
    body = sub(body, 1, length)
  end
  return body
end

-- Reads a chunked body that begins with `rest`, at most max_bytes of data.
function Conn:chunked(rest, max_bytes, status)
  local buf, pos = rest, 1
  local pieces, n, total = {}, 0, 0
  -- makes at least k bytes available from pos; false and a failure when they do not come
  local function need(k, what)
    while #buf - pos + 1 < k do
      local data, err = self:more()
      if not data then return false, read_failure(err, what, status) end
      buf = sub(buf, pos) .. data
      pos = 1
    end
    return true
  end
  -- the next line (without CRLF), or nil and a failure
  local function line(what)
    while true do
      local e = find(buf, "\n", pos, true)
      if e then
        local text = sub(buf, pos, e - 1)
        pos = e + 1
        if byte(text, -1) == 13 then text = sub(text, 1, -2) end
        return text
      end
      if #buf - pos + 1 > LINE_MAX then
        return nil, failure("network", "a chunk-size line of the body is over " .. LINE_MAX .. " bytes", false, status)
      end
      local ok, f = need(#buf - pos + 2, what)
      if not ok then return nil, f end
    end
  end
  while true do
    local text, f = line("in the chunked body after " .. total .. " bytes")
    if not text then return nil, f end
    local hex = match(text, "^%s*(%x+)%s*[;]?")
    if not hex or #hex > 12 then
      return nil, failure("network", "the chunked body has a malformed chunk size", false, status)
    end
    local size = tonumber(hex, 16)
    if size == 0 then break end
    total = total + size
    if total > max_bytes then return nil, "too_large" end
    while size > 0 do
      local avail = #buf - pos + 1
      if avail == 0 then
        local data, err = self:more(size)
        if not data then
          return nil, read_failure(err, "in the chunked body after " .. (total - size) .. " bytes", status)
        end
        buf, pos, avail = data, 1, #data
      end
      local take = min(avail, size)
      n = n + 1
      pieces[n] = sub(buf, pos, pos + take - 1)
      pos, size = pos + take, size - take
    end
    local ok, f2 = need(2, "in the chunked body")
    if not ok then return nil, f2 end
    if sub(buf, pos, pos + 1) == "\r\n" then pos = pos + 2
    elseif sub(buf, pos, pos) == "\n" then pos = pos + 1
    else return nil, failure("network", "the chunked body has a chunk without its CRLF", false, status) end
  end
  -- trailers, up to the empty line
  while true do
    local text, f = line("in the chunked body's trailers")
    if not text then return nil, f end
    if text == "" then break end
  end
  if pos <= #buf then self.extra = true end
  return concat(pieces, "", 1, n)
end

-- Reads a body that ends when the connection closes.
function Conn:until_close(rest, max_bytes, status)
  local pieces, n, have = { rest }, 1, #rest
  while true do
    if have > max_bytes then return nil, "too_large" end
    local data, err = self:more()
    if not data then
      if err == "closed" then break end
      return nil, read_failure(err, "after " .. have .. " body bytes", status)
    end
    n = n + 1
    pieces[n] = data
    have = have + #data
  end
  return concat(pieces, "", 1, n)
end

-- Opens a connection (or takes one from the pool). Returns the socket and how often it was
-- reused, or nil and a failure.
local function connect(target, o, deadline)
  local sock = tcp()
  local connect_s = min(o.connect_timeout, deadline - now())
  if connect_s <= 0 then return nil, failure("timeout", "no time left to connect", true) end
  sock:settimeouts(ms(connect_s), ms(deadline - now()), ms(deadline - now()))
  local ok, err = sock:connect(target.host, target.port, { pool = target.pool, pool_size = o.keepalive_pool })
  if not ok then
    if err == "timeout" then
      return nil, failure("timeout", "connecting to " .. target.host_header .. " timed out", true)
    elseif find(err, "resolve", 1, true) then
      -- "no resolver defined to resolve ..." or "... could not be resolved (...)": not retried
      return nil, failure("network", "cannot resolve " .. target.host .. ": " .. err
        .. (find(err, "no resolver", 1, true) and " (nginx.conf needs a `resolver`)" or ""), false)
    end
    return nil, failure("network", "cannot connect to " .. target.host_header .. ": " .. err, true)
  end
  local reused = sock:getreusedtimes() or 0
  if target.tls and reused == 0 then
    update_time()
    local left = deadline - now()
    if left <= 0 then
      sock:close()
      return nil, failure("timeout", "no time left for the TLS handshake", true)
    end
    sock:settimeout(ms(left))
    -- verify on, SNI = the host name, which is also the name the certificate must carry
    local session, herr = sock:sslhandshake(nil, target.host, true)
    if not session then
      sock:close()
      if herr == "timeout" then
        return nil, failure("timeout", "the TLS handshake with " .. target.host_header .. " timed out", true)
      end
      return nil, failure("network", "TLS with " .. target.host_header .. " failed: " .. tostring(herr), false)
    end
  end
  return sock, reused
end

-- One request on one connection: the response, or nil, a failure (or "empty" or "too_large"),
-- and whether any byte of an answer arrived, with the status when a head was read.
local function exchange(sock, request, o, deadline)
  local c = setmetatable({ sock = sock, deadline = deadline, stall = o.stall_timeout, got = 0,
                           window_start = now(), window_bytes = 0 }, Conn)
  sock:settimeout(ms(max(0.001, deadline - now())))
  local sent, serr = sock:send(request)
  if not sent then
    if serr == "timeout" then return nil, failure("timeout", "sending the request timed out", true), false end
    return nil, failure("network", "sending the request failed: " .. serr, true), false
  end
  local head, f = c:head()
  if not head then return nil, f, c.got > 0 end
  local status, h = head.status, head.headers
  local encoding = h["content-encoding"]
  local body, length, berr
  local te = h["transfer-encoding"]
  local chunked = te and find(lower(te), "chunked", 1, true)
  local until_close = false
  if status == 204 or status == 304 or (status >= 100 and status < 200) then
    body = ""
  elseif chunked then
    body, berr = c:chunked(head.rest, o.max_bytes, status)
  elseif h["content-length"] then
    length = match(h["content-length"], "^%d+$") and tonumber(h["content-length"])
    if not length or length >= 2 ^ 53 then
      return nil, failure("network", "the server's reply has a malformed Content-Length", false, status), true
    end
    if length > o.max_bytes then berr = "too_large"
    else body, berr = c:fixed(length, head.rest, status) end
  else
    until_close = true
    body, berr = c:until_close(head.rest, o.max_bytes, status)
  end
  if berr == "too_large" or (body and #body > o.max_bytes) then
    return nil, failure("too_large", "the response is larger than max_response_bytes (" .. o.max_bytes .. ")",
                        false, status), true
  end
  if not body then return nil, berr, true end
  if encoding and lower(encoding) ~= "identity" then
    return nil, failure("network", "the server sent a body in content encoding '" .. encoding
      .. "', which was not asked for", false, status), true
  end
  local conn = lower(h["connection"] or "")
  local keep = not until_close and not c.extra and not find(conn, "close", 1, true)
    and (head.version == 1 or find(conn, "keep-alive", 1, true)) and status ~= 101
  return { status = status, body = body, retry_after = h["retry-after"], keep = keep }
end

--- One GET: `request` is the whole request (bytes). Returns the response table, or nil, kind,
--- message, retryable, sends and the status of an answer that began but did not complete.
function M.get(target, request, o, budget)
  update_time()
  local deadline = now() + o.timeout
  local sends = 0
  budget = budget or 1
  while true do
    local sock, reused = connect(target, o, deadline)
    if not sock then
      local f = reused -- connect's failure
      return nil, f.kind, f.message, f.retryable, max(sends, 1), f.status
    end
    sends = sends + 1
    local res, f, answered = exchange(sock, request, o, deadline)
    if res then
      if res.keep then
        sock:setkeepalive(o.keepalive_timeout * 1000, o.keepalive_pool)
      else
        sock:close()
      end
      res.keep = nil
      res.sends, res.reused = sends, reused > 0
      return res
    end
    sock:close()
    if f == "empty" then
      f = failure("network", "the server closed the connection without an answer (empty reply)", true)
    end
    -- A pooled connection that the server had closed meanwhile: nothing of an answer came
    -- back, so the request goes again on another connection, within the budget the core
    -- allows for this attempt (libcurl does the same). Anything else is the caller's.
    if not (reused > 0 and not answered and f.kind == "network" and f.retryable and sends < budget) then
      return nil, f.kind, f.message, f.retryable, sends, f.status
    end
  end
end

return M
