/*
** libFuzzer harness for osvi_decode_response (src/decode.c).
**
** Input format (see corpus/decode/README):
**   byte 0   HTTP status: status_table[byte0 % 32] (200 half of the time)
**   byte 1   Retry-After: -1 (absent) when < 0x80, else (byte1 - 0x80) * 30 s
**   rest     the response body, passed as is (not NUL-terminated)
**
** Every input is decoded under lua_pcall by a small C function, so that a
** Lua error escaping osvi_decode_response (which must never happen: it
** returns a page or an error object) is caught and turned into abort().
** The result is then checked against what src/osvi.h and README.md
** promise; any violation aborts so that libFuzzer records the input.
*/
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "osvi.h" /* src/, via -I */
#include "fuzz_allow.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define GC_EVERY 256      /* full collection every N inputs */
#define MAX_WALK_DEPTH 80 /* normalise() refuses more than 64 levels */

static const long status_table[32] = {
    200, 200, 200, 200, 200, 200, 200, 200, /* 0..15: half the inputs */
    200, 200, 200, 200, 200, 200, 200, 200,
    401, 404, 422, 429, 500, 502, 302, 418, /* 16..23 */
    403, 204, 301, 400, 408, 503, 504, 100  /* 24..31 */
};

static lua_State *L;
static unsigned long runs;
static int verbose;

/* The input being decoded, read by decode_cb. */
static struct {
  long status, retry_after;
  const char *body;
  size_t len;
} cur;

#define FAIL(...)                                                      \
  do {                                                                 \
    fprintf(stderr, "fuzz_decode: invariant violated: ");              \
    fprintf(stderr, __VA_ARGS__);                                      \
    fprintf(stderr, " (status %ld, retry_after %ld, %zu-byte body)\n", \
            cur.status, cur.retry_after, cur.len);                     \
    abort();                                                           \
  } while (0)

/* Runs under lua_pcall with an empty stack: returns the decoded value and
** osvi_decode_response's return code, after checking its stack effect. */
static int decode_cb(lua_State *LL) {
  int r;
  if (lua_gettop(LL) != 0) FAIL("decode_cb called with arguments");
  r = osvi_decode_response(LL, cur.status, cur.body, cur.len, cur.retry_after);
  if (lua_gettop(LL) != 1)
    FAIL("stack effect is %+d, expected +1 ([-0, +1])", lua_gettop(LL));
  if (r != 0 && r != 1) FAIL("returned %d", r);
  lua_pushinteger(LL, r);
  return 2;
}

/* ------------------------------------------------------------------------
** Checks
** --------------------------------------------------------------------- */

/* Every value below the table at idx (keys and values): no light userdata
** (JSON null), no float that is integral or not finite. */
static void walk(int idx, int depth, const char *where) {
  if (depth > MAX_WALK_DEPTH)
    FAIL("%s: nested deeper than %d", where, MAX_WALK_DEPTH);
  if (!lua_checkstack(L, 4)) FAIL("%s: lua_checkstack failed", where);
  idx = lua_absindex(L, idx);
  if (lua_getmetatable(L, idx)) FAIL("%s: a table has a metatable", where);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int i;
    for (i = -2; i <= -1; i++) { /* the key, then the value */
      switch (lua_type(L, i)) {
        case LUA_TLIGHTUSERDATA:
          FAIL("%s: light userdata (a JSON null) left in the page", where);
          break;
        case LUA_TNUMBER:
          if (!lua_isinteger(L, i)) {
            lua_Number x = lua_tonumber(L, i);
            if (!isfinite(x)) FAIL("%s: a non-finite number %g", where, x);
            if (x == floor(x))
              FAIL("%s: integral number %.17g left as a float", where, x);
          }
          break;
        case LUA_TTABLE:
          if (i == -1)
            walk(i, depth + 1, where);
          else
            FAIL("%s: a table used as a key", where);
          break;
        case LUA_TSTRING:
        case LUA_TBOOLEAN: break;
        default:
          FAIL("%s: unexpected %s in the page", where, luaL_typename(L, i));
      }
    }
    lua_pop(L, 1);
  }
}

static void check_page(int page) {
  static const char *const counters[] = {"current_page", "total_pages",
                                         "total_count", "per_page"};
  lua_Integer n, count = 0;
  int data, meta, i, nkeys = 0;
  if (!lua_istable(L, page)) FAIL("page is a %s", luaL_typename(L, page));
  if (cur.status < 200 || cur.status > 299) FAIL("a page for a non-2xx status");
  /* exactly two fields, data and meta */
  lua_pushnil(L);
  while (lua_next(L, page)) {
    nkeys++;
    lua_pop(L, 1);
  }
  if (nkeys != 2) FAIL("page has %d fields, expected data and meta", nkeys);
  if (lua_getfield(L, page, "data") != LUA_TTABLE)
    FAIL("page.data is not a table");
  data = lua_gettop(L);
  if (lua_getfield(L, page, "meta") != LUA_TTABLE)
    FAIL("page.meta is not a table");
  meta = lua_gettop(L);

  /* data: a sequence 1..n of tables, nothing else */
  n = (lua_Integer)lua_rawlen(L, data);
  lua_pushnil(L);
  while (lua_next(L, data)) {
    lua_Integer k;
    if (!lua_isinteger(L, -2)) FAIL("data has a non-integer key");
    k = lua_tointeger(L, -2);
    if (k < 1 || k > n)
      FAIL("data has key %lld outside 1..%lld", (long long)k, (long long)n);
    if (!lua_istable(L, -1))
      FAIL("data[%lld] is a %s", (long long)k, luaL_typename(L, -1));
    count++;
    lua_pop(L, 1);
  }
  if (count != n)
    FAIL("data is not a sequence (%lld values, length %lld)", (long long)count,
         (long long)n);
  walk(data, 1, "data");

  /* meta: the four counters are non-negative integers */
  for (i = 0; i < 4; i++) {
    if (lua_getfield(L, meta, counters[i]) != LUA_TNUMBER ||
        !lua_isinteger(L, -1))
      FAIL("meta.%s is not an integer", counters[i]);
    if (lua_tointeger(L, -1) < 0) FAIL("meta.%s is negative", counters[i]);
    lua_pop(L, 1);
  }
  walk(meta, 1, "meta");
  lua_settop(L, page);
}

/* The kind an error for this status must have. */
static const char *expected_kind(long status) {
  switch (status) {
    case 401: return "auth";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 422: return "validation";
    case 429: return "rate_limited";
    default:
      if (status >= 200 && status <= 299) return NULL; /* decode or api */
      if (status >= 500 && status <= 599) return "server";
      return "http";
  }
}

/* luaL_tolstring under pcall, so a failing __tostring is caught. */
static int tostring_cb(lua_State *LL) {
  luaL_tolstring(LL, 1, NULL);
  return 1;
}

static void check_error(int err) {
  const char *kind, *want;
  size_t len;
  if (!lua_istable(L, err)) FAIL("error is a %s", luaL_typename(L, err));

  /* the shared metatable, with __tostring */
  if (!lua_getmetatable(L, err)) FAIL("error object has no metatable");
  luaL_getmetatable(L, OSVI_ERROR_MT);
  if (!lua_rawequal(L, -1, -2))
    FAIL("error object's metatable is not " OSVI_ERROR_MT);
  lua_pop(L, 2);

  if (lua_getfield(L, err, "kind") != LUA_TSTRING)
    FAIL("error.kind is not a string");
  kind = lua_tostring(L, -1);
  want = expected_kind(cur.status);
  if (want != NULL) {
    if (strcmp(kind, want) != 0)
      FAIL("kind '%s' for HTTP %ld, expected '%s'", kind, cur.status, want);
  } else if (strcmp(kind, "decode") != 0 && strcmp(kind, "api") != 0) {
    FAIL("kind '%s' for a 2xx, expected 'decode' or 'api'", kind);
  }
  lua_pop(L, 1);

  if (lua_getfield(L, err, "message") != LUA_TSTRING)
    FAIL("error.message is not a string");
  lua_tolstring(L, -1, &len);
  if (len == 0) FAIL("error.message is empty");
  lua_pop(L, 1);

  /* status: set whenever a response arrived (always, here) */
  if (lua_getfield(L, err, "status") != LUA_TNUMBER || !lua_isinteger(L, -1) ||
      lua_tointeger(L, -1) != cur.status)
    FAIL("error.status is not %ld", cur.status);
  lua_pop(L, 1);

  /* retry_after: only for HTTP errors, equal to what was passed */
  switch (lua_getfield(L, err, "retry_after")) {
    case LUA_TNIL:
      if (cur.retry_after >= 0 && expected_kind(cur.status) != NULL)
        FAIL("error.retry_after is missing");
      break;
    case LUA_TNUMBER:
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) != cur.retry_after)
        FAIL("error.retry_after is not %ld", cur.retry_after);
      break;
    default: FAIL("error.retry_after is a %s", luaL_typename(L, -1));
  }
  lua_pop(L, 1);

  /* errors: when present, a sequence of strings (the server's strings) */
  switch (lua_getfield(L, err, "errors")) {
    case LUA_TNIL: break;
    case LUA_TTABLE: {
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1), count = 0;
      int t = lua_gettop(L);
      lua_pushnil(L);
      while (lua_next(L, t)) {
        if (!lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1)
          FAIL("error.errors has a key that is not an index");
        if (lua_tointeger(L, -2) > n && !allowed("errors-holes"))
          FAIL("error.errors is not a sequence (index %lld, length %lld)",
               (long long)lua_tointeger(L, -2), (long long)n);
        if (lua_type(L, -1) != LUA_TSTRING)
          FAIL("error.errors holds a %s", luaL_typename(L, -1));
        count++;
        lua_pop(L, 1);
      }
      if (count != n && !allowed("errors-holes"))
        FAIL("error.errors has holes (%lld values, length %lld)",
             (long long)count, (long long)n);
      break;
    }
    default: FAIL("error.errors is a %s", luaL_typename(L, -1));
  }
  lua_pop(L, 1);

  /* tostring(err) works and reads "osvi: <kind> ..." */
  lua_pushcfunction(L, tostring_cb);
  lua_pushvalue(L, err);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK)
    FAIL("tostring(err) raised: %s", lua_tostring(L, -1));
  if (lua_type(L, -1) != LUA_TSTRING ||
      strncmp(lua_tostring(L, -1), "osvi: ", 6) != 0)
    FAIL("tostring(err) does not start with 'osvi: '");
  lua_settop(L, err);
}

/* ------------------------------------------------------------------------
** libFuzzer entry points
** --------------------------------------------------------------------- */

/* Loads the osvi parts decode needs, in protected mode. */
static int init_cb(lua_State *LL) {
  osvi_error_open(LL);
  osvi_decode_open(LL); /* require "cjson" */
  return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  verbose = getenv("OSVI_FUZZ_VERBOSE") != NULL;
  L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  /* Debian's lua-cjson for 5.4 first, whatever LUA_CPATH says */
  if (luaL_dostring(L,
                    "package.cpath = '/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;'"
                    " .. package.cpath") != LUA_OK) {
    fprintf(stderr, "fuzz_decode: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_pushcfunction(L, init_cb);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_decode: init: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int is_page;
  if (size < 2) return 0;
  cur.status = status_table[data[0] % 32];
  cur.retry_after = data[1] < 0x80 ? -1 : (long)(data[1] - 0x80) * 30;
  cur.body = (const char *)data + 2;
  cur.len = size - 2;

  lua_settop(L, 0);
  lua_pushcfunction(L, decode_cb);
  if (lua_pcall(L, 0, 2, 0) != LUA_OK) {
    const char *msg = luaL_tolstring(L, -1, NULL);
    FAIL("a Lua error escaped osvi_decode_response: %s", msg);
  }
  is_page = lua_tointeger(L, 2) == 1;
  if (is_page)
    check_page(1);
  else
    check_error(1);
  if (verbose) { /* OSVI_FUZZ_VERBOSE=1: say what each input gave */
    if (is_page) {
      lua_getfield(L, 1, "data");
      fprintf(stderr, "HTTP %ld: a page of %u calls\n", cur.status,
              (unsigned)lua_rawlen(L, -1));
    } else {
      lua_getfield(L, 1, "message");
      fprintf(stderr, "HTTP %ld: %s\n", cur.status, lua_tostring(L, -1));
    }
  }

  lua_settop(L, 0);
  if (++runs % GC_EVERY == 0) lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
