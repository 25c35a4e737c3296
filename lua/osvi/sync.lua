--[[
osvi.sync -- keep a local copy of the account's calls in SQLite or PostgreSQL,
incremental and resumable. The command line is `osvi-calls sync` (osvi/sync_cli.lua).

  local sync = require "osvi.sync"
  local summary = sync.run { db = "sqlite:calls.db", filters = { status = "picked" } }
  print(summary.new, summary.updated, summary.unchanged)

  local store = sync.open "sqlite:calls.db"      -- or "postgres://user@host/db"
  for _, row in ipairs(store:query("SELECT status, count(*) AS n FROM calls GROUP BY status")) do ... end
  local call = store:get(call_id)                 -- the call as the API sent it
  store:close()

The driver is LuaDBI (Debian's lua-dbi-sqlite3 / lua-dbi-postgresql): every value reaches the
database as a bound parameter of a prepared statement; no SQL is ever built from API strings.
See the README, "Keep a local copy", for the schema, the algorithm and the reasons.

How a run works (details at M.run):
  - page 1 is read first (one request): it gives the newest call and total_count;
  - then a cursor reads down from page 2 until the listing reaches calls older than the last
    complete run's newest call minus `overlap` (the first run: to the end of the listing);
    pages are written with multi-row upserts, in transactions committed about once a second,
    each together with how far the run got (a segment of ranks, see the README);
  - calls still in_progress at their last read are re-read: by the walk when they are within
    the window, else by reading the page that holds them now (found by their rank);
  - an interrupted run (network, Ctrl-C, kill -9) is resumed by the next one: it reads from the
    top down to the interrupted run's newest call, jumps below the lowest call it committed,
    and goes on from there.

Written for Lua 5.4, and kept to what Lua 5.1, 5.3 and LuaJIT also have.
]]

local osvi = require "osvi"
local cjson = require "cjson"

local M = { _VERSION = "osvi.sync 0.1.0", SCHEMA_VERSION = 1 }

M.DEFAULT_DB = "sqlite:osvi-calls.db"
M.DEFAULT_OVERLAP = 2 * 86400 -- seconds
M.DEFAULT_PER_PAGE = 100
M.DEFAULT_COMMIT_INTERVAL = 1 -- seconds between commits while a run goes on

local unpack = table.unpack or rawget(_G, "unpack") -- 5.1, LuaJIT
local floor = math.floor

------------------------------------------------------------------------------
-- Errors: tables with .kind, like osvi's ("usage", "db", "conflict", "schema")
------------------------------------------------------------------------------

local SyncError = {}
SyncError.__index = SyncError
SyncError.__tostring = function(e) return "osvi.sync: " .. e.kind .. ": " .. e.message end

local function raise(kind, fmt, ...)
  error(setmetatable({ kind = kind, message = string.format(fmt, ...) }, SyncError), 0)
end
M.Error = SyncError

------------------------------------------------------------------------------
-- Small helpers
------------------------------------------------------------------------------

local now
do
  local ok, socket = pcall(require, "socket")
  if ok and type(socket) == "table" and socket.gettime then
    now = socket.gettime
  else
    now = os.time
  end
end
M.now = now

local math_type = rawget(math, "type") -- nil before 5.3
local function is_integer(v)
  if math_type then return math_type(v) == "integer" end
  return type(v) == "number" and v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53
end

-- An integer from a database value (LuaDBI reads integer columns into a C int, so every
-- integer this module reads back is selected as text: see the README).
local function int(v)
  if v == nil then return nil end
  local n = tonumber(v)
  if n == nil then return nil end
  if math.tointeger then return math.tointeger(n) or n end
  return n
end

local function copy(t)
  local c = {}
  for k, v in pairs(t or {}) do c[k] = v end
  return c
end

-- Whether s is well-formed UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF).
local function valid_utf8(s)
  if not s:find("[\128-\255]") then return true end
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x80 then
      i = i + 1
    else
      local len, cp, min
      if c >= 0xC2 and c <= 0xDF then len, cp, min = 2, c - 0xC0, 0x80
      elseif c >= 0xE0 and c <= 0xEF then len, cp, min = 3, c - 0xE0, 0x800
      elseif c >= 0xF0 and c <= 0xF4 then len, cp, min = 4, c - 0xF0, 0x10000
      else return false end
      if i + len - 1 > n then return false end
      for k = i + 1, i + len - 1 do
        local b = s:byte(k)
        if b < 0x80 or b > 0xBF then return false end
        cp = cp * 64 + (b - 0x80)
      end
      if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return false end
      i = i + len
    end
  end
  return true
end
M.valid_utf8 = valid_utf8

local REPLACEMENT = "\239\191\189" -- U+FFFD

-- s with NUL bytes and (when utf8 is set) bytes that are not UTF-8 replaced by U+FFFD.
local function lossy(s, utf8)
  if not utf8 then return (s:gsub("%z", REPLACEMENT)) end
  local out, i, n = {}, 1, #s
  while i <= n do
    local j = i
    -- the longest valid prefix from i, one character at a time
    while j <= n do
      local c = s:byte(j)
      local len = c < 0x80 and 1 or (c >= 0xC2 and c <= 0xDF) and 2 or (c >= 0xE0 and c <= 0xEF) and 3
        or (c >= 0xF0 and c <= 0xF4) and 4 or 0
      if len == 0 or c == 0 or not valid_utf8(s:sub(j, j + len - 1)) or j + len - 1 > n then break end
      j = j + len
    end
    out[#out + 1] = s:sub(i, j - 1)
    if j <= n then out[#out + 1] = REPLACEMENT; j = j + 1 end
    i = j
  end
  return table.concat(out)
end

local function to_hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function from_hex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

------------------------------------------------------------------------------
-- JSON for the `extra` column: exact integers, sorted keys, any bytes kept
------------------------------------------------------------------------------

-- Strings are written byte for byte, with ", \ and control characters escaped. Where the
-- database takes only UTF-8 (PostgreSQL with a UTF-8 encoding), a string that is not UTF-8 is
-- written as {"osvi:hex": "<its bytes in hex>"}, and decode_extra turns it back.
local HEX_KEY = "osvi:hex"
local JSON_ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
local function json_escape(c) return JSON_ESC[c] or string.format("\\u%04x", c:byte()) end

local encode_value
local function encode_string(s, utf8)
  if utf8 and not valid_utf8(s) then return '{"' .. HEX_KEY .. '":"' .. to_hex(s) .. '"}' end
  return '"' .. s:gsub('[%c"\\]', json_escape) .. '"'
end

encode_value = function(v, utf8)
  local t = type(v)
  if t == "string" then return encode_string(v, utf8) end
  if t == "number" then
    if is_integer(v) then return string.format("%d", v) end
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    return string.format("%.17g", v)
  end
  if t == "boolean" then return tostring(v) end
  if t == "table" then
    local keys, n = {}, 0
    for k in pairs(v) do n = n + 1; keys[n] = k end
    if n > 0 and #v == n then
      local items = {}
      for i = 1, n do items[i] = encode_value(v[i], utf8) end
      return "[" .. table.concat(items, ",") .. "]"
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    local items = {}
    for i, k in ipairs(keys) do
      items[i] = encode_string(tostring(k), utf8) .. ":" .. encode_value(v[k], utf8)
    end
    return "{" .. table.concat(items, ",") .. "}"
  end
  return "null" -- cjson.null, userdata: nothing osvi hands out
end

-- Back from the extra column: osvi's normalisation (integral numbers are integers, no
-- nulls) and the hex-written strings as their bytes.
local function normalise(v)
  if type(v) == "number" then
    if math.tointeger and v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return math.tointeger(v) end
    return v
  end
  if type(v) ~= "table" then return v end
  local hex = v[HEX_KEY]
  if type(hex) == "string" and next(v, next(v)) == nil then return from_hex(hex) end
  for k, x in pairs(v) do
    if x == cjson.null then v[k] = nil else v[k] = normalise(x) end
  end
  return v
end

local function decode_extra(text)
  if text == nil or text == "" then return nil end
  local ok, v = pcall(cjson.decode, text)
  if not ok or type(v) ~= "table" then return nil end
  return normalise(v)
end

------------------------------------------------------------------------------
-- Calls <-> rows
------------------------------------------------------------------------------

-- The columns of `calls` that come from the API, in order: the column, the API field (nil for
-- tag_* and *_epoch), and its type ("text" or "int").
local COLUMNS = {
  { "call_id", "call_id", "text" },
  { "agent_uuid", "agent_uuid", "text" },
  { "agent_name", "agent_name", "text" },
  { "phone_number", "phone_number", "text" },
  { "from_number", "from_number", "text" },
  { "status", "status", "text" },
  { "call_type", "call_type", "text" },
  { "duration_seconds", "duration_seconds", "int" },
  { "call_ended_by", "call_ended_by", "text" },
  { "call_ended_reason", "call_ended_reason", "text" },
  { "campaign_id", "campaign_id", "int" },
  { "campaign_upload_id", "campaign_upload_id", "int" },
  { "tag_id", nil, "int" },
  { "tag_name", nil, "text" },
  { "tag_color_code", nil, "text" },
  { "created_at", "created_at", "text" },
  { "created_epoch", nil, "int" },
  { "call_picked_at", "call_picked_at", "text" },
  { "call_picked_epoch", nil, "int" },
  { "extra", nil, "text" },
}
local NCOL = #COLUMNS + 1 -- and synced_at, written by the run
M.COLUMNS = {}
for i, c in ipairs(COLUMNS) do M.COLUMNS[i] = c[1] end

-- API fields with a column of their own (tag is split in three).
local KNOWN = { tag = true }
for _, c in ipairs(COLUMNS) do if c[2] then KNOWN[c[2]] = true end end

local function epoch(s)
  if type(s) ~= "string" then return nil end
  local ok, t = pcall(osvi.time, s)
  return ok and t or nil
end

-- Whether a value fits a column of that type as it is; strings must hold no NUL (LuaDBI
-- passes them as C strings) and, for PostgreSQL in UTF-8, be UTF-8.
local function fits(v, ty, utf8)
  if ty == "int" then return is_integer(v) end
  if type(v) ~= "string" then return false end
  return not utf8 or (not v:find("\0", 1, true) and valid_utf8(v))
end

-- The columns filled from a field of the same name: index, field, is it text.
local DIRECT = {}
for i, c in ipairs(COLUMNS) do
  if c[2] then DIRECT[#DIRECT + 1] = { i, c[2], c[3] == "text" } end
end
local NDIRECT = #DIRECT

-- Fills out[b + 1] .. out[b + NCOL] (nil for NULL) from a call; `utf8`: the database takes
-- only UTF-8. A value that does not fit its column goes to `extra` whole (a string that does
-- not fit leaves a lossy copy in its column, for reports); so do fields the API adds later.
-- Columns plus extra give the call back exactly (M.row_to_call). It runs for every call of a
-- sync, so the part for the columns of their own is generated from COLUMNS as straight-line
-- code (a third less time than a loop over a table of columns, written straight into the
-- statement's arguments); only the column names of COLUMNS go into it, never API strings.
local int_type = math_type or function(v) return is_integer(v) and "integer" or nil end

local function text_ok(v, utf8)
  return type(v) == "string" and (not utf8 or (not v:find("\0", 1, true) and valid_utf8(v)))
end

-- the tag when it is not the usual {id, name, color_code} with values that fit: its three
-- fields in columns, anything else of it in extra.tag
local function tag_slow(tag, out, b, utf8, extra)
  if type(tag) == "table" then
    local rest
    for k, v in pairs(tag) do
      local j = k == "id" and 1 or k == "name" and 2 or k == "color_code" and 3 or nil
      if j and fits(v, j == 1 and "int" or "text", utf8) then
        out[b + 12 + j] = v
      else
        if j and j > 1 and type(v) == "string" then out[b + 12 + j] = lossy(v, utf8) end
        rest = rest or {}
        rest[k] = v
      end
    end
    if rest or next(tag) == nil then
      extra = extra or {}
      extra.tag = rest or {}
    end
  else
    extra = extra or {}
    extra.tag = tag
  end
  return extra
end

local fill_row
do
  local src = { "local type, pairs, int_type, text_ok, lossy, tag_slow, epoch, encode_value, KNOWN = ...\n",
    "return function(call, out, b, utf8, synced_at)\n  local extra, v\n" }
  for d = 1, NDIRECT do
    local i, field, text = DIRECT[d][1], DIRECT[d][2], DIRECT[d][3]
    assert(field:match("^[%a_][%w_]*$"))
    src[#src + 1] = string.format("  v = call.%s\n", field)
    if text then
      src[#src + 1] = string.format("  if v == nil or (not utf8 and type(v) == \"string\") or text_ok(v, utf8) then\n"
        .. "    out[b + %d] = v\n  else\n"
        .. "    out[b + %d] = type(v) == \"string\" and lossy(v, utf8) or nil\n", i, i)
    else
      src[#src + 1] = string.format("  if v == nil or int_type(v) == \"integer\" then out[b + %d] = v else\n"
        .. "    out[b + %d] = nil\n", i, i)
    end
    src[#src + 1] = string.format("    extra = extra or {}; extra.%s = v\n  end\n", field)
  end
  src[#src + 1] = [[
  local tag = call.tag
  out[b + 13], out[b + 14], out[b + 15] = nil, nil, nil
  if tag ~= nil then
    local id, name, color = nil, nil, nil
    local usual = type(tag) == "table"
    if usual then
      id, name, color = tag.id, tag.name, tag.color_code
      local n = 0
      for _ in pairs(tag) do n = n + 1 end
      usual = n > 0 and n == (id ~= nil and 1 or 0) + (name ~= nil and 1 or 0) + (color ~= nil and 1 or 0)
        and (id == nil or int_type(id) == "integer")
        and (name == nil or (not utf8 and type(name) == "string") or text_ok(name, utf8))
        and (color == nil or (not utf8 and type(color) == "string") or text_ok(color, utf8))
    end
    if usual then
      out[b + 13], out[b + 14], out[b + 15] = id, name, color
    else
      extra = tag_slow(tag, out, b, utf8, extra)
    end
  end
  out[b + 17] = epoch(call.created_at)
  out[b + 19] = epoch(call.call_picked_at)
  for k, x in pairs(call) do
    if not KNOWN[k] then
      extra = extra or {}
      extra[k] = x
    end
  end
  out[b + 20] = extra and encode_value(extra, utf8) or nil
  out[b + 21] = synced_at
end
]]
  local chunk = assert((rawget(_G, "loadstring") or load)(table.concat(src), "=osvi.sync.fill_row"))
  fill_row = chunk(type, pairs, int_type, text_ok, lossy, tag_slow, epoch, encode_value, KNOWN)
end
assert(NCOL == 21 and COLUMNS[13][1] == "tag_id" and COLUMNS[17][1] == "created_epoch"
  and COLUMNS[19][1] == "call_picked_epoch" and COLUMNS[20][1] == "extra")

-- Fills `out` (an array of NCOL values, nil for NULL) from a call; returns it.
local function call_to_row(call, out, utf8, synced_at)
  fill_row(call, out, 0, utf8, synced_at)
  return out
end
M.call_to_row = call_to_row

--- The call as the API sent it, from a row of `calls` (a table by column name; integers may
--- be given as text).
function M.row_to_call(row)
  local call = {}
  for i = 1, #COLUMNS - 1 do
    local c = COLUMNS[i]
    if c[2] and row[c[1]] ~= nil then
      call[c[2]] = c[3] == "int" and int(row[c[1]]) or row[c[1]]
    end
  end
  if row.tag_id ~= nil or row.tag_name ~= nil or row.tag_color_code ~= nil then
    call.tag = { id = int(row.tag_id), name = row.tag_name, color_code = row.tag_color_code }
  end
  local extra = decode_extra(row.extra)
  if extra then
    for k, v in pairs(extra) do
      if k == "tag" and type(v) == "table" and type(call.tag) == "table" then
        for tk, tv in pairs(v) do call.tag[tk] = tv end
      else
        call[k] = v
      end
    end
  end
  return call
end

------------------------------------------------------------------------------
-- The database: LuaDBI, SQLite or PostgreSQL
------------------------------------------------------------------------------

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Parses a --db value: "sqlite:FILE" (or a plain file name), or
--- "postgres://[user[:password]@][host][:port][/dbname][?host=/socket/dir]". Returns a table
--- {kind, path} or {kind, user, password, host, port, dbname}; raises a usage error.
function M.parse_db(url)
  if type(url) ~= "string" or url == "" then raise("usage", "db: expected sqlite:FILE or postgres://...") end
  local scheme, rest = url:match("^(%a[%w+.-]*):(.*)$")
  if scheme == "sqlite" or scheme == "sqlite3" then
    rest = rest:gsub("^//", "")
    if rest == "" then raise("usage", "db: sqlite: needs a file name (sqlite:FILE)") end
    return { kind = "sqlite", path = rest }
  elseif scheme == "postgres" or scheme == "postgresql" then
    local body = rest:match("^//(.*)$")
    if not body then raise("usage", "db: expected postgres://[user[:password]@]host[:port]/dbname") end
    local query
    body, query = body:match("^([^?]*)%??(.*)$")
    local auth, hostport, dbname
    if body:find("@", 1, true) then
      auth, hostport, dbname = body:match("^(.*)@([^@/]*)/?([^/]*)$")
    else
      auth = ""
      hostport, dbname = body:match("^([^/]*)/?([^/]*)$")
    end
    if not hostport then raise("usage", "db: cannot read the postgres URL") end
    local user, password = auth:match("^([^:]*):(.*)$")
    if not user then user = auth end
    local host, port = hostport:match("^(.-):(%d+)$")
    if not host then host = hostport end
    local cfg = { kind = "postgres",
                  user = user ~= "" and percent_decode(user) or nil,
                  password = password and percent_decode(password) or nil,
                  host = host ~= "" and percent_decode(host) or nil,
                  port = port and tonumber(port) or nil,
                  dbname = dbname ~= "" and percent_decode(dbname) or nil }
    for k, v in (query or ""):gmatch("([^&=]+)=([^&]*)") do
      k, v = percent_decode(k), percent_decode(v)
      if k == "host" then cfg.host = v
      elseif k == "port" then cfg.port = tonumber(v)
      elseif k == "user" then cfg.user = v
      elseif k == "password" then cfg.password = v
      elseif k == "dbname" then cfg.dbname = v
      else raise("usage", "db: unknown postgres URL parameter '%s'", k) end
    end
    if cfg.port and (cfg.port < 1 or cfg.port > 65535) then raise("usage", "db: bad port") end
    return cfg
  elseif scheme and #scheme > 1 then
    raise("usage", "db: unknown database kind '%s:' (sqlite: or postgres://)", scheme)
  end
  return { kind = "sqlite", path = url }
end

--- The db URL with any password hidden, for messages.
function M.redact(url)
  return (tostring(url):gsub("^(%a[%w+.-]*://[^:/@]*:)[^@]*@", "%1***@"):gsub("([?&]password=)[^&]*", "%1***"))
end

local Store = {}
Store.__index = Store

local function db_error(_, what, err)
  raise("db", "%s: %s", what, tostring(err):gsub("%s+$", ""))
end

-- sql with its `?` placeholders (outside 'quoted literals') numbered $1, $2 ... (PostgreSQL's).
local function numbered(sql)
  local out, n, i = {}, 0, 1
  while i <= #sql do
    local c = sql:sub(i, i)
    if c == "'" then -- a literal, '' inside it included
      local j = i + 1
      while true do
        local k = sql:find("'", j, true)
        if not k then j = #sql + 1; break end
        if sql:sub(k + 1, k + 1) == "'" then j = k + 2 else j = k + 1; break end
      end
      out[#out + 1] = sql:sub(i, j - 1)
      i = j
    elseif c == "?" then
      n = n + 1
      out[#out + 1] = "$" .. n
      i = i + 1
    else
      local k = sql:find("[?']", i) or #sql + 1
      out[#out + 1] = sql:sub(i, k - 1)
      i = k
    end
  end
  return table.concat(out)
end

-- A prepared statement for sql, cached; `?` placeholders (turned into $n for PostgreSQL,
-- whose LuaDBI 0.7.2 numbers at most 999 of them itself).
function Store:prepare(sql)
  local st = self.statements[sql]
  if st then return st end
  local text = self.pg and numbered(sql) or sql
  local err
  st, err = self.conn:prepare(text)
  if not st then db_error(self, "prepare", err) end
  self.statements[sql] = st
  return st
end

-- SQLite: while osvi.sync writes (a run, a migration) it opens each transaction itself with
-- BEGIN IMMEDIATE, which takes the write lock at once, waiting for it as long as busy_timeout
-- says; otherwise the connection is in autocommit mode and a read is a transaction of its
-- own. (LuaDBI's own BEGIN is deferred: a transaction that reads first asks for the write lock
-- at its first write, and when another connection has committed in between, SQLite refuses at
-- once, SQLITE_BUSY_SNAPSHOT, without waiting: two syncs into one file failed with "database
-- is locked".)
function Store:writing()
  if self.sqlite and not self.tx and (self.running or self.migrating) then
    local ok, err = self:prepare("BEGIN IMMEDIATE"):execute()
    if not ok then db_error(self, "begin", err) end
    self.tx = true
  end
end

--- Runs a statement with bound values; returns the rows it affected.
function Store:exec(sql, ...)
  self:writing()
  local st = self:prepare(sql)
  local ok, err = st:execute(...)
  if not ok then db_error(self, "execute", err) end
  return st:affected()
end

-- The rows of a query, each a table by column name (named) or an array.
function Store:rows(named, sql, ...)
  self:writing()
  local st = self:prepare(sql)
  local ok, err = st:execute(...)
  if not ok then db_error(self, "execute", err) end
  local rows = {}
  while true do
    local row = st:fetch(named)
    if not row then break end
    rows[#rows + 1] = row
  end
  return rows
end

function Store:arrays(sql, ...) return self:rows(false, sql, ...) end

-- Ends the transaction that a read opened (LuaDBI keeps one open), unless a run is writing.
function Store:done()
  if not self.running then self:commit() end
end

--- Runs a query with bound values (`?` placeholders); returns its rows, each a table by
--- column name. LuaDBI reads integer columns into a C int: select integers that may pass
--- 2^31 as CAST(x AS TEXT).
function Store:query(sql, ...)
  local rows = self:rows(true, sql, ...)
  self:done()
  return rows
end

function Store:commit()
  if self.sqlite and not self.tx then return end -- autocommit: nothing open
  if not self.conn:commit() then db_error(self, "commit", "the transaction could not be committed") end
  self.tx = false
end

function Store:rollback()
  if self.conn then self.conn:rollback() end
  self.tx = false
end

function Store:close()
  if self.conn then
    for _, st in pairs(self.statements) do pcall(st.close, st) end
    self.statements = {}
    self.conn:close()
    self.conn = nil
  end
end

-- Table existence, without creating anything.
function Store:has_table(name)
  if self.pg then
    return self:arrays("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
      .. "AND table_name = ?", name)[1] ~= nil
  end
  return self:arrays("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", name)[1] ~= nil
end

-- Schema: each entry upgrades from the version before it. Types: INT is INTEGER in SQLite
-- (64-bit) and BIGINT in PostgreSQL.
local MIGRATIONS = {
  [1] = function(store)
    local INT = store.pg and "BIGINT" or "INTEGER"
    local cols = {}
    for i, c in ipairs(COLUMNS) do
      cols[i] = c[1] .. " " .. (c[3] == "int" and INT or "TEXT") .. (i == 1 and " PRIMARY KEY" or "")
    end
    cols[#cols + 1] = "synced_at " .. INT .. " NOT NULL"
    store:exec("CREATE TABLE calls (" .. table.concat(cols, ", ") .. ")")
    store:exec("CREATE INDEX calls_created_epoch ON calls (created_epoch)")
    store:exec("CREATE TABLE osvi_sync_state ("
      .. "filter_key TEXT PRIMARY KEY, filters TEXT NOT NULL, "
      .. "newest_epoch " .. INT .. ", newest_id TEXT, newest_rank " .. INT .. ", "
      .. "runs " .. INT .. " NOT NULL DEFAULT 0, last_run_at " .. INT .. ", last_run_calls " .. INT .. ", "
      .. "run_id " .. INT .. ", run_owner TEXT, run_started_at " .. INT .. ", run_stop_epoch " .. INT .. ", "
      .. "run_top_epoch " .. INT .. ", run_top_id TEXT, run_top_rank " .. INT .. ", "
      .. "run_low_epoch " .. INT .. ", run_low_id TEXT, run_low_rank " .. INT .. ", "
      .. "run_calls " .. INT .. ")")
    store:exec("CREATE TABLE osvi_sync_in_progress ("
      .. "filter_key TEXT NOT NULL, call_id TEXT NOT NULL, created_epoch " .. INT .. ", "
      .. "call_rank " .. INT .. ", seen_run " .. INT .. ", PRIMARY KEY (filter_key, call_id))"
      .. (store.pg and "" or " WITHOUT ROWID"))
  end,
}

-- Brings the schema to SCHEMA_VERSION (created on first use), one transaction per step.
function Store:migrate()
  self.migrating = true
  if self.pg then
    -- one migrating session at a time; released at the end of the transaction
    self:arrays("SELECT pg_advisory_xact_lock(7305127100)")
  end
  self:exec("CREATE TABLE IF NOT EXISTS osvi_schema (version INTEGER NOT NULL)")
  local row = self:arrays("SELECT CAST(max(version) AS TEXT) FROM osvi_schema")[1]
  local version = row and int(row[1]) or 0
  if version > M.SCHEMA_VERSION then
    self:rollback()
    raise("schema", "the database has schema version %d; this osvi knows up to %d (upgrade osvi)",
      version, M.SCHEMA_VERSION)
  end
  while version < M.SCHEMA_VERSION do
    version = version + 1
    MIGRATIONS[version](self)
    self:exec("DELETE FROM osvi_schema")
    self:exec("INSERT INTO osvi_schema (version) VALUES (?)", version)
  end
  self:commit()
  self.migrating = false
  self.version = version
end

--- Opens (and creates or upgrades) the database named by a --db value. Options: `create`
--- (default true; false: a missing SQLite file or schema is not created, and store.empty is
--- set instead).
function M.open(url, options)
  options = options or {}
  local cfg = type(url) == "table" and url or M.parse_db(url or M.DEFAULT_DB)
  local ok, DBI = pcall(require, "DBI")
  if not ok then raise("db", "LuaDBI is not installed (Debian: lua-dbi-sqlite3, lua-dbi-postgresql)") end
  local store = setmetatable({ cfg = cfg, statements = {}, pg = cfg.kind == "postgres" }, Store)
  local conn, err
  if cfg.kind == "sqlite" then
    if options.create == false then
      local f = io.open(cfg.path, "rb")
      if not f then store.empty = true; return store end
      f:close()
    end
    ok, conn, err = pcall(DBI.Connect, "SQLite3", cfg.path)
    if not ok then raise("db", "%s (Debian: lua-dbi-sqlite3)", tostring(conn)) end
    if not conn then raise("db", "cannot open %s: %s", cfg.path, tostring(err)) end
    store.conn = conn
    -- pragmas outside a transaction; WAL: readers (reports) never block the sync and a
    -- killed process leaves the last committed transaction; synchronous=NORMAL: no fsync
    -- per commit (safe against a crashed process, not a lost power supply);
    -- wal_autocheckpoint 16384 pages (64 MiB with 4 KiB pages) instead of 1000: a first sync
    -- rewrites most of the call_id index at every commit, so with 1000 every commit after the
    -- first few megabytes copied the whole log into the database and synced it; now a first
    -- sync of 100,000 calls checkpoints once, when the connection closes (crash consistency
    -- does not depend on it: the log is the commit record)
    conn:autocommit(true)
    local pragmas = { "PRAGMA busy_timeout = 10000", "PRAGMA journal_mode = WAL",
                      "PRAGMA synchronous = NORMAL", "PRAGMA cache_size = -32768",
                      "PRAGMA wal_autocheckpoint = 16384" }
    for _, p in ipairs(pragmas) do
      store:arrays(p)
    end
    for _, st in pairs(store.statements) do st:close() end
    store.statements = {}
    store.sqlite = true -- autocommit, and transactions of its own: Store:writing()
    store.utf8 = false -- SQLite keeps the bytes it is given
  else
    ok, conn, err = pcall(DBI.Connect, "PostgreSQL", cfg.dbname or os.getenv("PGDATABASE") or cfg.user
      or os.getenv("PGUSER") or os.getenv("USER") or "postgres", cfg.user, cfg.password, cfg.host, cfg.port)
    if not ok then raise("db", "%s (Debian: lua-dbi-postgresql)", tostring(conn)) end
    if not conn then raise("db", "cannot connect to PostgreSQL: %s", tostring(err):gsub("%s+$", "")) end
    store.conn = conn
    store:arrays("SET client_min_messages = warning") -- no NOTICEs on stderr
    local enc = store:arrays("SHOW server_encoding")[1]
    store.utf8 = not (enc and enc[1] == "SQL_ASCII")
    store:commit()
  end
  if options.create == false and not store:has_table("osvi_schema") then
    store:rollback()
    store.empty = true
    return store
  end
  local mok, merr = pcall(store.migrate, store)
  if not mok then
    store:rollback()
    store:close()
    error(merr, 0)
  end
  return store
end

local SELECT_CALL = {}
for i, c in ipairs(COLUMNS) do
  SELECT_CALL[i] = c[3] == "int" and ("CAST(" .. c[1] .. " AS TEXT) AS " .. c[1]) or c[1]
end
SELECT_CALL = "SELECT " .. table.concat(SELECT_CALL, ", ") .. " FROM calls"

--- The call with this call_id as the API sent it, or nil.
function Store:get(call_id)
  local row = self:rows(true, SELECT_CALL .. " WHERE call_id = ?", call_id)[1]
  self:done()
  return row and M.row_to_call(row) or nil
end

--- Every call of the database, as the API sent them: an array, newest first.
function Store:calls()
  local rows = self:rows(true, SELECT_CALL .. " ORDER BY created_epoch DESC, call_id")
  self:done()
  for i, row in ipairs(rows) do rows[i] = M.row_to_call(row) end
  return rows
end

local STATE_COLUMNS = { "newest_epoch", "newest_id", "newest_rank", "runs", "last_run_at", "last_run_calls",
  "run_id", "run_owner", "run_started_at", "run_stop_epoch", "run_top_epoch", "run_top_id", "run_top_rank",
  "run_low_epoch", "run_low_id", "run_low_rank", "run_calls" }
local STATE_INT = {}
for _, c in ipairs(STATE_COLUMNS) do
  if not c:match("_id$") and c ~= "run_owner" then STATE_INT[c] = true end
end
STATE_INT.run_id = true
local SELECT_STATE = {}
for i, c in ipairs(STATE_COLUMNS) do
  SELECT_STATE[i] = STATE_INT[c] and ("CAST(" .. c .. " AS TEXT) AS " .. c) or c
end
SELECT_STATE = "SELECT filter_key, filters, " .. table.concat(SELECT_STATE, ", ")
  .. " FROM osvi_sync_state WHERE filter_key = ?"

local function read_state(store, key)
  local row = store:rows(true, SELECT_STATE, key)[1]
  if not row then return nil end
  for c in pairs(STATE_INT) do row[c] = int(row[c]) end
  return row
end

--- The sync state of a filter set (nil if it was never synced): newest_epoch, newest_id,
--- runs, last_run_at, and run_* while a run is unfinished.
function Store:state(filters)
  if self.empty then return nil end
  local state = read_state(self, M.filter_key(filters or {}))
  self:done()
  return state
end

------------------------------------------------------------------------------
-- Filters
------------------------------------------------------------------------------

local NOT_FILTERS = { page = true, per_page = true, limit = true }

-- The filters of a sync (checked by osvi): page, per_page and limit are not filters of a copy.
local function sync_filters(filters)
  local f = {}
  for k, v in pairs(filters or {}) do
    if NOT_FILTERS[k] then raise("usage", "filter '%s' does not apply to a sync", k) end
    f[k] = v
  end
  return f
end

--- The key of a filter set in osvi_sync_state: osvi.query() of it ("" for every call).
function M.filter_key(filters)
  return osvi.query(sync_filters(filters))
end

------------------------------------------------------------------------------
-- A run
------------------------------------------------------------------------------

local Run = {}
Run.__index = Run

-- The upsert of k calls: one statement, k rows. A row that is there already is written only
-- when a column differs (so `affected` counts new and changed rows).
function Run:upsert_sql(k)
  local sql = self.upsert_cache[k]
  if sql then return sql end
  local names, sets, diffs = {}, {}, {}
  for i, c in ipairs(COLUMNS) do
    names[i] = c[1]
    if i > 1 then
      sets[#sets + 1] = c[1] .. " = excluded." .. c[1]
      diffs[#diffs + 1] = "calls." .. c[1] .. (self.pg and " IS DISTINCT FROM " or " IS NOT ") .. "excluded." .. c[1]
    end
  end
  names[#names + 1] = "synced_at"
  sets[#sets + 1] = "synced_at = excluded.synced_at"
  local one = "(" .. string.rep("?, ", NCOL - 1) .. "?)"
  local rows = {}
  for i = 1, k do rows[i] = one end
  sql = "INSERT INTO calls (" .. table.concat(names, ", ") .. ") VALUES " .. table.concat(rows, ", ")
    .. " ON CONFLICT (call_id) DO UPDATE SET " .. table.concat(sets, ", ")
    .. " WHERE " .. table.concat(diffs, " OR ")
    .. (self.pg and " RETURNING (xmax = 0)" or "")
  self.upsert_cache[k] = sql
  return sql
end

-- Writes the calls of one page (an array; ranks: their ranks in the listing).
function Run:write(calls, ranks)
  local store, stats = self.store, self.stats
  local args, n, k = self.args, 0, 0
  local seen = {}
  for i, call in ipairs(calls) do
    local id = call.call_id
    if type(id) ~= "string" or id == "" or id:find("%z") then
      raise("data", "a call without a usable call_id (in the listing at rank %s)", tostring(ranks[i]))
    end
    if not seen[id] then -- a page that names a call twice: the first is kept
      seen[id] = true
      fill_row(call, args, n, self.utf8, self.synced_at)
      n = n + NCOL
      k = k + 1
    end
  end
  if k == 0 then return end
  self.dirty = true
  store:writing()
  local st = store:prepare(self:upsert_sql(k))
  local ok, err = st:execute(unpack(args, 1, n))
  if not ok then db_error(store, "upsert", err) end
  local new, changed
  if self.pg then
    changed, new = 0, 0
    while true do
      local r = st:fetch(false)
      if not r then break end
      changed = changed + 1
      if r[1] == true or r[1] == "t" then new = new + 1 end
    end
  else
    changed = st:affected()
    local top = int(store:arrays("SELECT CAST(max(rowid) AS TEXT) FROM calls")[1][1]) or 0
    new = top - self.max_rowid
    self.max_rowid = top
  end
  stats.new = stats.new + new
  stats.updated = stats.updated + (changed - new)
  stats.unchanged = stats.unchanged + (k - changed)
  stats.calls = stats.calls + k
  self.run_calls = self.run_calls + k
  -- calls in progress: remembered, with their rank, to be read again by the next runs
  for i, call in ipairs(calls) do
    local id = call.call_id
    if call.status == "in_progress" then
      local created = epoch(call.created_at)
      store:exec(self.pending_upsert, self.key, id, created, ranks[i], self.run_id)
      self.pending[id] = { created = created, rank = ranks[i], seen = self.run_id }
    elseif self.pending[id] then
      store:exec("DELETE FROM osvi_sync_in_progress WHERE filter_key = ? AND call_id = ?", self.key, id)
      self.pending[id] = nil
    end
  end
end

-- Saves how far the run got with what was written since the last commit, in one transaction;
-- fails (and rolls back) when another run of the same filter set took over.
function Run:commit(force)
  local t = now()
  if not force and t - self.last_commit < self.commit_interval then return end
  local low, top = self.low, self.top
  local affected
  if self.segment then
    affected = self.store:exec("UPDATE osvi_sync_state SET run_top_epoch = ?, run_top_id = ?, run_top_rank = ?, "
      .. "run_low_epoch = ?, run_low_id = ?, run_low_rank = ?, run_calls = ? WHERE filter_key = ? AND run_owner = ?",
      top.epoch, top.id, top.rank, low.epoch, low.id, low.rank, self.run_calls, self.key, self.owner)
  else
    affected = self.store:exec("UPDATE osvi_sync_state SET run_calls = ? WHERE filter_key = ? AND run_owner = ?",
      self.run_calls, self.key, self.owner)
  end
  if affected ~= 1 then
    self.store:rollback()
    raise("conflict", "another sync of the same filters took over this run; it goes on there")
  end
  self.store:commit()
  self.dirty = false
  self.last_commit = now()
end

-- While the next page is on its way: commits what was written since the last commit, when
-- that was IDLE_COMMIT seconds ago or more. SQLite lets one connection write at a time, and a run
-- that kept its transaction open through the network's time (a second between commits) kept a
-- second sync of the same file (another filter set, or a run taking over) waiting until
-- busy_timeout ran out. With no latency a page is always in, and commits stay once a second.
local IDLE_COMMIT = 0.25

function Run:idle()
  if self.dirty and now() - self.last_commit >= IDLE_COMMIT then self:commit(true) end
end

local function call_pos(call, rank, total)
  return { epoch = epoch(call.created_at), id = call.call_id, rank = rank, total = total }
end

-- Whether call (with its epoch) is strictly older than a position.
local function older(e, pos)
  return e ~= nil and pos.epoch ~= nil and e < pos.epoch
end

function Run:progress(phase)
  if not self.on_progress then return end
  local s = self.stats
  local elapsed = now() - self.started
  local eta
  if self.expected and s.calls > 0 and elapsed > 0 then
    eta = math.max(0, self.expected - s.calls) / (s.calls / elapsed)
  end
  self.on_progress({ phase = phase, pages = s.pages, calls = s.calls, new = s.new, updated = s.updated,
                     unchanged = s.unchanged, requests = s.requests, elapsed = elapsed,
                     expected = self.expected, eta = eta })
end

-- The page that holds `rank` in a listing of `total` calls.
function Run:page_of(rank)
  local index = (self.total or rank) - rank + 1
  if index < 1 then return 1 end
  return floor((index - 1) / self.pp) + 1
end

-- Reads down the listing with a cursor from `start_page` (limit: calls at most, nil: no
-- bound), skipping what is not below `anchor` (the last call already handled: calls newer
-- than it, and it). visit(calls, ranks) handles each page and returns true to stop.
-- Returns "stop", "end" (the listing ended), "limit", or "back" (the first page starts below
-- the anchor and calls may lie between: an earlier page must be read).
--
-- The first page is known to follow the anchor with nothing between when it holds the anchor,
-- when its first call is newer than the anchor, or when it starts at the rank just below the
-- anchor's in a listing whose total_count has not changed since the anchor's rank was read
-- (anchor.total): ranks move only when calls leave or join the filtered view, and both change
-- total_count (arrivals at the top change neither the ranks nor what lies below the anchor).
function Run:read_down(start_page, anchor, limit, visit)
  local f = copy(self.filters)
  f.page, f.per_page, f.limit = start_page, self.pp, limit
  local cur = self.client:calls(f)
  local requests0 = 0
  local ok, res = pcall(function()
    local first, passed = true, anchor == nil
    while true do
      local page = cur:poll()
      if page == false then -- not in yet: the network's time
        self:idle()
        page = cur:next_page()
      end
      local st = cur.stats
      self.stats.requests = self.stats.requests + (st.requests - requests0)
      requests0 = st.requests
      if not page then return "end" end
      self.stats.pages = self.stats.pages + 1
      local total = page.meta and page.meta.total_count
      if total then self.total = total end
      local data = page.data
      local before = st.calls - #data
      if first and not passed and start_page > 1 and data[1] then
        local holds = false
        for _, call in ipairs(data) do
          if call.call_id == anchor.id then holds = true; break end
        end
        local e = epoch(data[1].created_at)
        local newer = e ~= nil and anchor.epoch ~= nil and e > anchor.epoch
        local adjacent = anchor.total ~= nil and total == anchor.total and before == 0
          and st.top == anchor.rank - 1
        if not (holds or newer or adjacent) then return "back" end
        if adjacent and not holds then passed = true end
      end
      local calls, ranks = {}, {}
      for i, call in ipairs(data) do
        local rank = st.top - before - i + 1
        if passed then
          calls[#calls + 1], ranks[#ranks + 1] = call, rank
        elseif call.call_id == anchor.id then
          passed = true
        else
          local e = epoch(call.created_at)
          if older(e, anchor) then
            passed = true
            calls[#calls + 1], ranks[#ranks + 1] = call, rank
          elseif e ~= nil and e == anchor.epoch then
            -- the same second as the anchor: before or after it, written again to be sure
            calls[#calls + 1], ranks[#ranks + 1] = call, rank
          end
        end
      end
      first = false
      if #calls > 0 and visit(calls, ranks) then return "stop" end
    end
  end)
  local yielded = cur.stats.calls
  cur:close()
  if not ok then error(res, 0) end
  if res == "end" and limit and yielded >= limit then res = "limit" end
  return res
end

-- Reads down from just below `pos` (a position {epoch, id, rank, total}) until visit says
-- stop or the listing ends; `need`: calls expected to be read (nil: all of them), to bound
-- prefetch. Without pos.total (a position saved by an interrupted run), the first page read is
-- the one that holds pos itself.
function Run:read_below(pos, need, visit)
  local start = self:page_of(pos.total and pos.rank - 1 or pos.rank)
  while true do
    -- the landing page holds calls above pos too: they count against the limit
    local above = math.max(0, math.min(self.pp, (self.total or 0) - pos.rank + 1 - (start - 1) * self.pp))
    local limit = need and (need + above) or nil
    local res = self:read_down(start, pos, limit, visit)
    if res == "back" then
      start = math.max(1, start - 1)
    elseif res == "limit" then
      -- the estimate was short: go on below the last call read
      pos = self.pos
      need = need and need * 2 or nil
      start = self:page_of(pos.rank - 1)
    else
      return res
    end
  end
end

-- Handles a page of the walk: writes it, moves the positions on, commits now and then.
-- Returns true when the walk has reached the stop (calls older than stop_epoch).
function Run:walk_page(calls, ranks)
  self:write(calls, ranks)
  local last = #calls
  self.pos = call_pos(calls[last], ranks[last], self.total)
  if self.segment then self.low = self.pos end
  self.stats.walk_pages = (self.stats.walk_pages or 0) + 1
  self:progress("walk")
  self:commit(false)
  if self.stop == nil then return false end
  for i = last, 1, -1 do
    local e = epoch(calls[i].created_at)
    if e ~= nil then return e < self.stop end
  end
  return false
end

-- Calls still in progress at their last read and older than the window: read again from the
-- page that holds them now (found by rank, then by time).
function Run:recheck_pending()
  local todo = {}
  for id, p in pairs(self.pending) do
    if p.seen ~= self.run_id and (p.created == nil or self.stop == nil or p.created < self.stop) then
      todo[#todo + 1] = { id = id, created = p.created, rank = p.rank or 1, tries = 0 }
    end
  end
  table.sort(todo, function(a, b) return a.rank > b.rank end)
  local gone = 0
  while #todo > 0 do
    local item = table.remove(todo, 1)
    local page_no = item.page or self:page_of(item.rank)
    local f = copy(self.filters)
    f.page, f.per_page = page_no, self.pp
    local page, err = self.client:page(f)
    if not page then error(err, 0) end
    self.stats.requests = self.stats.requests + (page.fetch and page.fetch.attempts or 1)
    self.stats.pages = self.stats.pages + 1
    self.total = page.meta.total_count
    local data = page.data
    local by_id = {}
    for i, call in ipairs(data) do by_id[call.call_id] = i end
    -- every item that this page settles
    local group = { item }
    for i = #todo, 1, -1 do
      if by_id[todo[i].id] then group[#group + 1] = table.remove(todo, i) end
    end
    local calls, ranks = {}, {}
    for _, it in ipairs(group) do
      local i = by_id[it.id]
      if i then
        calls[#calls + 1] = data[i]
        ranks[#ranks + 1] = page.meta.total_count - ((page_no - 1) * self.pp + i) + 1
      else
        -- not on the page: look one page up or down (by time), a few times, then give up
        local first_e = data[1] and epoch(data[1].created_at)
        local last_e = data[#data] and epoch(data[#data].created_at)
        local step
        if it.created and first_e and it.created > first_e and page_no > 1 then step = -1
        elseif it.created and last_e and it.created < last_e and #data > 0 then step = 1 end
        it.tries = it.tries + 1
        if step and it.tries < 4 then
          it.page = page_no + step
          todo[#todo + 1] = it
        else
          -- no longer in this listing (it left the filtered view): forgotten
          self.store:exec("DELETE FROM osvi_sync_in_progress WHERE filter_key = ? AND call_id = ?", self.key, it.id)
          self.pending[it.id] = nil
          gone = gone + 1
        end
      end
    end
    if #calls > 0 then
      self:write(calls, ranks)
      for _, c in ipairs(calls) do
        if self.pending[c.call_id] then self.pending[c.call_id].seen = self.run_id end
      end
      self:progress("in_progress")
    end
  end
  self.stats.left = (self.stats.left or 0) + gone
end

-- The state row of this filter set, created when missing; takes the run over (run_owner).
function Run:begin()
  local store = self.store
  local state = read_state(store, self.key)
  if not state then
    store:exec("INSERT INTO osvi_sync_state (filter_key, filters, runs) VALUES (?, ?, 0)",
      self.key, self.filters_text)
    state = read_state(store, self.key)
  end
  self.state = state
  self.owner = string.format("%d-%d-%06d", os.time(), floor(now() * 1000) % 1000000, math.random(0, 999999))
  if state.run_id then
    self.resumed = true
    self.run_id = state.run_id
    self.stop = state.run_stop_epoch
    self.first = state.run_stop_epoch == nil and state.newest_epoch == nil
    self.run_calls = state.run_calls or 0
    if state.run_low_id or state.run_low_rank then
      self.old_top = { epoch = state.run_top_epoch, id = state.run_top_id, rank = state.run_top_rank }
      self.old_low = { epoch = state.run_low_epoch, id = state.run_low_id, rank = state.run_low_rank }
    end
    store:exec("UPDATE osvi_sync_state SET run_owner = ? WHERE filter_key = ?", self.owner, self.key)
  else
    self.run_id = (state.runs or 0) + 1
    self.first = state.newest_epoch == nil
    self.stop = state.newest_epoch and (state.newest_epoch - self.overlap) or nil
    self.run_calls = 0
    store:exec("UPDATE osvi_sync_state SET run_id = ?, run_owner = ?, run_started_at = ?, run_stop_epoch = ?, "
      .. "run_top_epoch = NULL, run_top_id = NULL, run_top_rank = NULL, run_low_epoch = NULL, "
      .. "run_low_id = NULL, run_low_rank = NULL, run_calls = 0 WHERE filter_key = ?",
      self.run_id, self.owner, self.synced_at, self.stop, self.key)
  end
  -- the calls in progress at their last read
  self.pending = {}
  for _, r in ipairs(store:arrays("SELECT call_id, CAST(created_epoch AS TEXT), CAST(call_rank AS TEXT), "
      .. "CAST(seen_run AS TEXT) FROM osvi_sync_in_progress WHERE filter_key = ?", self.key)) do
    self.pending[r[1]] = { created = int(r[2]), rank = int(r[3]), seen = int(r[4]) }
  end
  if not self.pg then
    self.max_rowid = int(store:arrays("SELECT CAST(max(rowid) AS TEXT) FROM calls")[1][1]) or 0
  end
  store:commit()
  self.last_commit = now()
end

-- The filters as a WHERE condition over `calls` and its bound values: near enough to the API's
-- own filtering to estimate how many calls a walk will read (nothing else depends on it).
local function filter_condition(filters, pg)
  local cond, vals = {}, {}
  local function add(sql, ...)
    cond[#cond + 1] = sql
    for i = 1, select("#", ...) do vals[#vals + 1] = (select(i, ...)) end
  end
  local status = filters.status
  if status ~= nil then
    local list = {}
    if type(status) == "table" then
      for _, v in ipairs(status) do list[#list + 1] = tostring(v) end
    else
      for v in tostring(status):gmatch("[^,]+") do list[#list + 1] = v end
    end
    if #list > 0 then add("status IN (" .. string.rep("?, ", #list - 1) .. "?)", unpack(list)) end
  end
  for _, k in ipairs { "agent_uuid", "call_type" } do
    if filters[k] ~= nil then add(k .. " = ?", tostring(filters[k])) end
  end
  for _, k in ipairs { "campaign_id", "campaign_upload_id" } do
    if filters[k] ~= nil then add(k .. " = ?", tonumber(filters[k])) end
  end
  if filters.phone_number ~= nil then
    add((pg and "strpos(phone_number, ?)" or "instr(phone_number, ?)") .. " > 0", tostring(filters.phone_number))
  end
  local function bound(v, upper)
    local ok, t = pcall(osvi.time, v)
    if not ok or t == nil then return nil end
    if upper and type(v) == "string" and #v == 10 then t = t + 86399 end -- a whole IST day
    return t
  end
  local lo, hi = bound(filters.start_date), bound(filters.end_date, true)
  if lo then add("call_picked_epoch >= ?", lo) end
  if hi then add("call_picked_epoch <= ?", hi) end
  return cond, vals
end

-- Calls of the filter set in the local copy created between two times (an estimate of the
-- calls a walk reads again).
function Run:count_between(lo, hi)
  if lo == nil then return nil end
  local cond, vals = filter_condition(self.filters, self.pg)
  table.insert(cond, 1, "created_epoch >= ?")
  table.insert(vals, 1, lo)
  if hi then
    table.insert(cond, 2, "created_epoch <= ?")
    table.insert(vals, 2, hi)
  end
  local row = self.store:arrays("SELECT CAST(count(*) AS TEXT) FROM calls WHERE " .. table.concat(cond, " AND "),
    unpack(vals))[1]
  return int(row[1]) or 0
end

-- The walk: page 1, then down to the stop (a resumed run: down to where the interrupted run
-- started, then below where it stopped).
function Run:walk()
  local f = copy(self.filters)
  f.page, f.per_page = 1, self.pp
  local page, err = self.client:page(f)
  if not page then error(err, 0) end
  self.stats.requests = self.stats.requests + (page.fetch and page.fetch.attempts or 1)
  self.stats.pages = self.stats.pages + 1
  self.total = page.meta.total_count
  local data = page.data
  if #data == 0 then return end
  local ranks = {}
  for i = 1, #data do ranks[i] = self.total - i + 1 end
  self.top = call_pos(data[1], ranks[1])
  for i = 1, #data do -- the newest call with a time: the next runs stop by it
    local e = epoch(data[i].created_at)
    if e then self.newest = call_pos(data[i], ranks[i]); break end
  end
  self.newest = self.newest or self.top

  local state = self.state
  if self.old_low then
    -- resumed: down to the interrupted run's newest call, then below the lowest it wrote
    self.segment = false
    self.expected = math.max(0, self.total - (self.old_top.rank or self.total)) + (self:count_between(self.stop,
      self.old_low.epoch) or self.old_low.rank or 0)
    local joined = false
    local function visit_top(calls, r)
      self:write(calls, r)
      self.pos = call_pos(calls[#calls], r[#r], self.total)
      self.stats.walk_pages = (self.stats.walk_pages or 0) + 1
      self:progress("walk")
      for i, c in ipairs(calls) do
        local e = epoch(c.created_at)
        if c.call_id == self.old_top.id or older(e, self.old_top)
            or (self.old_top.rank and r[i] <= self.old_top.rank - self.pp) then
          joined = true
        end
      end
      if not joined then self:commit(false) end
      return joined
    end
    if not visit_top(data, ranks) then
      local need = math.max(0, self.total - (self.old_top.rank or 0)) + 1
      local res = self:read_below(self.pos, need, visit_top)
      if res == "end" then return end
    end
    -- joined: the segment now starts at this run's top
    self.segment = true
    self.low = self.old_low
    self:commit(true)
    if self.stop ~= nil then
      for i = #data, 1, -1 do -- the stop may lie above the old segment's low already
        local e = epoch(data[i].created_at)
        if e then if e < self.stop then return end break end
      end
      if older(self.old_low.epoch, { epoch = self.stop }) then return end
    end
    local need = self.stop and ((self:count_between(self.stop, self.old_low.epoch) or 0) + 1) or nil
    self:read_below(self.old_low, need, function(c, r) return self:walk_page(c, r) end)
    return
  end

  -- a new run: one segment from the top down
  self.segment = true
  local new_calls = state.newest_rank and math.max(0, self.total - state.newest_rank) or self.total
  local again = self.stop and self:count_between(self.stop, state.newest_epoch) or 0
  self.expected = self.first and self.total or (new_calls + again)
  if self:walk_page(data, ranks) then return end
  local need = (not self.first) and math.max(1, new_calls + again + 1 - #data) or nil
  self:read_below(self.pos, need, function(c, r) return self:walk_page(c, r) end)
end

-- Ends the run: in-progress calls that the walk should have seen and did not left the view;
-- the newest call becomes the mark of the next run.
function Run:finish()
  local store = self.store
  for id, p in pairs(self.pending) do
    if p.seen ~= self.run_id and (self.stop == nil or (p.created ~= nil and p.created >= self.stop)) then
      store:exec("DELETE FROM osvi_sync_in_progress WHERE filter_key = ? AND call_id = ?", self.key, id)
      self.pending[id] = nil
      self.stats.left = (self.stats.left or 0) + 1
    end
  end
  local newest = self.newest
  local state = self.state
  local affected = store:exec("UPDATE osvi_sync_state SET newest_epoch = ?, newest_id = ?, newest_rank = ?, "
    .. "runs = ?, last_run_at = ?, last_run_calls = ?, run_id = NULL, run_owner = NULL, run_started_at = NULL, "
    .. "run_stop_epoch = NULL, run_top_epoch = NULL, run_top_id = NULL, run_top_rank = NULL, "
    .. "run_low_epoch = NULL, run_low_id = NULL, run_low_rank = NULL, run_calls = NULL "
    .. "WHERE filter_key = ? AND run_owner = ?",
    newest and newest.epoch or state.newest_epoch, newest and newest.id or state.newest_id,
    newest and newest.rank or state.newest_rank, self.run_id, os.time(), self.run_calls, self.key, self.owner)
  if affected ~= 1 then
    store:rollback()
    raise("conflict", "another sync of the same filters took over this run; it goes on there")
  end
  store:commit()
end

local RUN_OPTIONS = { db = true, store = true, client = true, client_options = true, filters = true,
  overlap = true, per_page = true, dry_run = true, progress = true, commit_interval = true }

local function check_options(opts)
  for k in pairs(opts) do
    if not RUN_OPTIONS[k] then raise("usage", "unknown option '%s'", tostring(k)) end
  end
  if opts.overlap ~= nil and (type(opts.overlap) ~= "number" or opts.overlap < 0) then
    raise("usage", "overlap: expected seconds (a number >= 0)")
  end
  if opts.per_page ~= nil and (not is_integer(opts.per_page) or opts.per_page < 1 or opts.per_page > 100) then
    raise("usage", "per_page: expected an integer from 1 to 100")
  end
  if opts.progress ~= nil and type(opts.progress) ~= "function" then raise("usage", "progress: expected a function") end
end

-- What a run would do, without writing anything: one request (page 1, one call) for the count.
local function plan(opts, filters, key)
  local store = opts.store or M.open(opts.db or M.DEFAULT_DB, { create = false })
  local state
  if not store.empty then state = read_state(store, key) end
  local pending = 0
  local rows_between
  if state and not store.empty then
    pending = int(store:arrays("SELECT CAST(count(*) AS TEXT) FROM osvi_sync_in_progress WHERE filter_key = ?",
      key)[1][1]) or 0
    if state.newest_epoch then
      local stop = state.run_stop_epoch or (state.newest_epoch - (opts.overlap or M.DEFAULT_OVERLAP))
      rows_between = Run.count_between({ store = store, filters = filters, pg = store.pg }, stop)
    end
  end
  store:rollback()
  if not opts.store then store:close() end
  local client = opts.client or osvi.new(opts.client_options or {})
  local f = copy(filters)
  f.page, f.per_page = 1, 1
  local page, err = client:page(f)
  if not opts.client then client:close() end
  if not page then error(err, 0) end
  local total = page.meta.total_count
  local pp = opts.per_page or M.DEFAULT_PER_PAGE
  local p = { dry_run = true, filter_key = key, total_count = total, pending_in_progress = pending,
              requests = page.fetch and page.fetch.attempts or 1 }
  if not state or not state.newest_epoch then
    p.first = true
    p.resume = state ~= nil and state.run_id ~= nil
    p.calls = total
  else
    p.first = false
    p.resume = state.run_id ~= nil
    p.stop_epoch = state.run_stop_epoch or (state.newest_epoch - (opts.overlap or M.DEFAULT_OVERLAP))
    p.new_calls = math.max(0, total - (state.newest_rank or total))
    p.calls = p.new_calls + (rows_between or 0)
  end
  p.pages = math.ceil(p.calls / pp) + (p.calls % pp == 0 and 1 or 0)
  return p
end

--- Brings the local copy of a filter set up to date. Options:
---   db            "sqlite:FILE" (default sqlite:osvi-calls.db) or "postgres://..."
---   store         an open store (sync.open) instead of db
---   client        an osvi client (default: osvi.new(client_options), from the environment)
---   filters       osvi filters (not page, per_page, limit); each filter set has its own state
---   overlap       seconds (default 2 days): later runs read down to the last run's newest
---                 call minus this, to see calls that changed after they were read
---   per_page      1..100 (default 100)
---   dry_run       true: write nothing, return what would be read (one request)
---   progress      function(p) called after each page: {phase, pages, calls, new, updated,
---                 unchanged, requests, elapsed, expected, eta}
---   commit_interval  seconds between commits (default 1)
--- Returns a summary {pages, calls, new, updated, unchanged, requests, elapsed, first,
--- resumed, left}; raises osvi's error objects or a sync error (kinds usage, db, conflict,
--- schema, data). Whatever happens, the database stays consistent and the next run goes on.
function M.run(opts)
  opts = opts or {}
  if type(opts) ~= "table" then raise("usage", "sync.run: expected a table of options") end
  check_options(opts)
  local filters = sync_filters(opts.filters)
  local key = osvi.query(filters) -- checks the filters (a usage error from osvi)
  if opts.dry_run then return plan(opts, filters, key) end

  local store = opts.store or M.open(opts.db or M.DEFAULT_DB)
  local client = opts.client or osvi.new(opts.client_options or {})
  local run = setmetatable({
    store = store, client = client, filters = filters, key = key, pg = store.pg, utf8 = store.utf8,
    filters_text = key, pp = opts.per_page or M.DEFAULT_PER_PAGE,
    overlap = floor(opts.overlap or M.DEFAULT_OVERLAP),
    commit_interval = opts.commit_interval or M.DEFAULT_COMMIT_INTERVAL,
    on_progress = opts.progress, started = now(), synced_at = os.time(),
    stats = { pages = 0, calls = 0, new = 0, updated = 0, unchanged = 0, requests = 0 },
    args = {}, upsert_cache = {},
    pending_upsert = "INSERT INTO osvi_sync_in_progress (filter_key, call_id, created_epoch, call_rank, seen_run) "
      .. "VALUES (?, ?, ?, ?, ?) ON CONFLICT (filter_key, call_id) DO UPDATE SET "
      .. "created_epoch = excluded.created_epoch, "
      .. "call_rank = excluded.call_rank, seen_run = excluded.seen_run",
  }, Run)
  store.running = true
  local ok, err = pcall(function()
    run:begin()
    run:walk()
    run:recheck_pending()
    run:finish()
  end)
  store.running = false
  if not ok then
    pcall(store.rollback, store) -- what was committed stays; the rest is undone
  end
  if not opts.store then store:close() end
  if not opts.client then client:close() end
  if not ok then error(err, 0) end
  local s = run.stats
  return { pages = s.pages, calls = s.calls, new = s.new, updated = s.updated, unchanged = s.unchanged,
           requests = s.requests, elapsed = now() - run.started, first = run.first,
           resumed = run.resumed or false, left = s.left or 0, filter_key = key,
           newest = run.newest and run.newest.id, total_count = run.total }
end

return M
