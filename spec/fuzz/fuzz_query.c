/*
** libFuzzer harness for osvi_query_check (src/query.c, src/time.c).
**
** The input is a small program that builds a filter table (see
** corpus/query/README):
**   byte 0      bit 0: mode (0 page, 1 iterate);
**               bits 1-3: 0-5 a table, 6 nil, 7 a value that is not a table
**   then ops    [key byte] [value-type byte] [operands...], until the input
**               runs out (at most MAX_OPS): t[key] = value
** Keys are mostly the known filter names, sometimes near misses, odd
** strings or non-string keys; values are strings (from a dictionary of
** good and almost-good values, mutated, or raw input bytes), integers,
** floats, booleans, nil, or arrays of such.
**
** osvi_query_check runs under lua_pcall. It must either push a query made
** only of unreserved characters, %XX, '=', '&' and ',' (with the known
** filters in their fixed order), or raise a usage error object naming the
** key; anything else aborts.
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
#include "fuzz_program.h"
#include "fuzz_allow.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define GC_EVERY 256 /* full collection every N inputs */
#define MAX_OPS 32   /* assignments per input */
#define MAX_STR 48   /* length of a raw string value */

static lua_State *L;
static unsigned long runs;
static int verbose;

/* ------------------------------------------------------------------------
** Vocabulary
** --------------------------------------------------------------------- */

/* The filters, in the order query.c builds the query; the first NBASE are
** sent, page/per_page/limit are not. */
static const char *const names[] = {
    "status",       "agent_uuid", "campaign_id", "campaign_upload_id",
    "phone_number", "call_type",  "start_date",  "end_date",
    "page",         "per_page",   "limit"};
#define NNAMES 11
#define NBASE 8

/* Hand-packed data tables: clang-format 14 would put one item a line and
** split LS into a block. */
/* clang-format off */
#define LS(lit) {lit, sizeof(lit) - 1}

/* keys that are not filters: near misses, case, padding, NUL, long */
static const lstr wrong_keys[] = {
    LS("stauts"), LS("Status"), LS("per-page"), LS(""), LS("limit "),
    LS("x\0y"),   LS("campaign_identifier_that_is_longer_than_32_bytes")};
#define NWRONG (sizeof(wrong_keys) / sizeof(wrong_keys[0]))

static const lstr dict[] = {
    LS("picked"), LS("not_picked"), LS("failed"), LS("busy"), LS("voicemail"),
    LS("in_progress"), LS("picked,busy"), LS(" picked , voicemail "),
    LS("picked,"), LS(",picked"), LS("picked\0"), LS("PICKED"),
    LS("inbound"), LS("outbound"), LS("agent_abc"), LS("agent_"),
    LS("agent_A-b_9"), LS("agent_\xc3\xa9t\xc3\xa9"), LS("+919812345678"),
    LS("9198"), LS("+"), LS("1234567890123456"), LS("123456789012345"),
    LS("2026-06-01"), LS("2026-06-01T10:20:30Z"),
    LS("2026-06-01T10:20:30.123+05:30"), LS("2026-06-01t00:00:00-23:59"),
    LS("2024-02-29"), LS("2023-02-29"), LS("0001-01-01"),
    LS("0001-01-01T00:00:00+23:59"), LS("9999-12-31T23:59:59-23:59"),
    LS("0000-01-01"), LS("2026-06-01T24:00:00Z"),
    LS("2026-06-01T10:20:30.1234567890Z"), LS("2026-06-01T10:20:30.Z"),
    LS("2026-06-01T10:20:30+0530"), LS("2026-06-01 10:20:30Z"), LS("1"),
    LS("100"), LS("101"), LS("0"), LS("000000000000000001"),
    LS("999999999999999999"), LS("9223372036854775807"), LS("-1"),
    LS("1.5"), LS("0x10"), LS(" 1"), LS("1e3"), LS("2026-06-01T10:20:30"),
    LS("2026-06-01T10:20:30.5z"), LS("2026-02-30"), LS("2026-06-01T10:20:30+05:60")};
#define NDICT (sizeof(dict) / sizeof(dict[0]))

static const lua_Integer int_edges[] = {
    0, 1, -1, 2, 99, 100, 101, 1700000000, LUA_MAXINTEGER, LUA_MININTEGER,
    253402300799LL - 19800, 253402300799LL - 19800 + 1,
    -62135596800LL + 19800, -62135596800LL + 19800 - 1,
    9007199254740993LL, 922337203685477580LL};
#define NINT (sizeof(int_edges) / sizeof(int_edges[0]))

static const double float_edges[] = {
    0.0, -0.0, 1.0, 1.5, 100.0, 101.0, 0.5, 1e18, 9223372036854775808.0,
    -9223372036854775808.0, 1700000000.0, 253402280999.0, 253402281000.0,
    -62135577000.0, 9007199254740993.0, 1e300};
#define NFLOAT (sizeof(float_edges) / sizeof(float_edges[0]))
/* clang-format on */

/* ------------------------------------------------------------------------
** Reading the program
** --------------------------------------------------------------------- */

/* Pushes a string value (fuzz_program.h). */
static void push_string(reader *r, unsigned how) {
  push_dict_string(L, r, how, dict, NDICT, MAX_STR);
}

static void push_value(reader *r, int depth);

/* Pushes an array of 0..5 elements, mostly strings; sometimes with a hole. */
static void push_array(reader *r, int depth) {
  unsigned n = get(r) % 6, i, next = 1;
  lua_createtable(L, (int)n, 0);
  for (i = 0; i < n; i++) {
    unsigned k = get(r);
    if (k % 8 == 7) next++; /* leave a hole */
    if (k % 4 == 3 && depth < 3)
      push_value(r, depth + 1);
    else
      push_string(r, k >> 3);
    lua_rawseti(L, -2, (lua_Integer)next++);
  }
}

/* Pushes one value (nil included). */
static void push_value(reader *r, int depth) {
  unsigned t = get(r);
  switch (t % 10) {
    case 0:
    case 1:
    case 2: push_string(r, t / 10); break;
    case 3: lua_pushinteger(L, int_edges[get(r) % NINT]); break;
    case 4: lua_pushinteger(L, (lua_Integer)get64(r)); break;
    case 5: lua_pushnumber(L, float_edges[get(r) % NFLOAT]); break;
    case 6: {
      uint64_t bits = get64(r);
      double x;
      memcpy(&x, &bits, sizeof x); /* any double: NaN, inf, subnormals */
      lua_pushnumber(L, x);
      break;
    }
    case 7: push_array(r, depth); break;
    case 8: lua_pushboolean(L, (int)(t & 16)); break;
    default: lua_pushnil(L);
  }
}

/* Pushes one key (never nil, never NaN). */
static void push_key(reader *r) {
  unsigned k = get(r) % 32;
  if (k < 22) {
    lua_pushstring(L, names[k % NNAMES]);
  } else if (k < 22 + NWRONG) {
    lua_pushlstring(L, wrong_keys[k - 22].s, wrong_keys[k - 22].len);
  } else if (k < 30) {
    lua_pushinteger(L, 1);
  } else if (k == 30) {
    lua_pushnumber(L, 1.5);
  } else {
    lua_pushboolean(L, 1);
  }
}

/* ------------------------------------------------------------------------
** Checks
** --------------------------------------------------------------------- */

static struct {
  int mode, have_table, nonstring_key, nul_key;
  size_t size;
} cur;

#define FAIL(...)                                                           \
  do {                                                                      \
    fprintf(stderr, "fuzz_query: invariant violated: ");                    \
    fprintf(stderr, __VA_ARGS__);                                           \
    fprintf(stderr, " (mode %s, %zu-byte input)\n",                         \
            cur.mode == OSVI_QUERY_ITERATE ? "iterate" : "page", cur.size); \
    abort();                                                                \
  } while (0)

static osvi_filters out;

/* Runs under lua_pcall with the filters as argument 1: returns the query
** after checking the stack effect [-0, +1]. */
static int query_cb(lua_State *LL) {
  osvi_query_check(LL, 1, (osvi_query_mode)cur.mode, &out);
  if (lua_gettop(LL) != 2)
    FAIL("stack effect is %+d, expected +1", lua_gettop(LL) - 1);
  return 1;
}

/* Runs under lua_pcall with the base query as argument 1: returns the full
** query (osvi_query_push_full with the page and per_page just checked). */
static int full_cb(lua_State *LL) {
  osvi_query_push_full(LL, lua_tostring(LL, 1), out.page, out.per_page);
  if (lua_gettop(LL) != 2)
    FAIL("push_full: stack effect is %+d, expected +1", lua_gettop(LL) - 1);
  return 1;
}

/* The full query at idx is base, then &page=P and &per_page=N when set. */
static void check_full(int base, int full) {
  char tail[64];
  size_t blen, flen, tlen;
  const char *b = lua_tolstring(L, base, &blen), *f;
  int n = 0;
  if (lua_type(L, full) != LUA_TSTRING) FAIL("the full query is not a string");
  f = lua_tolstring(L, full, &flen);
  tail[0] = '\0';
  if (out.page > 0)
    n += snprintf(tail + n, sizeof tail - (size_t)n, "%spage=%lld",
                  blen > 0 ? "&" : "", (long long)out.page);
  if (out.per_page > 0)
    n += snprintf(tail + n, sizeof tail - (size_t)n, "%sper_page=%lld",
                  blen > 0 || out.page > 0 ? "&" : "", (long long)out.per_page);
  tlen = strlen(tail);
  if (flen != blen + tlen || memcmp(f, b, blen) != 0 ||
      memcmp(f + blen, tail, tlen) != 0)
    FAIL("full query '%s' for base '%s', page %lld, per_page %lld", f, b,
         (long long)out.page, (long long)out.per_page);
}

static int ishex(int c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

static int unreserved(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Is filter `name` set in the filter table at ft? */
static int is_set(int ft, const char *name) {
  int set;
  if (!cur.have_table) return 0;
  lua_pushstring(L, name);
  set = lua_rawget(L, ft) != LUA_TNIL;
  lua_pop(L, 1);
  return set;
}

/* The query at q for the filters at ft: charset, then structure. */
static void check_query(int ft, int q) {
  size_t len, i, nparts = 0, nset = 0;
  const char *s;
  int last = -1;
  if (lua_type(L, q) != LUA_TSTRING)
    FAIL("the query is a %s", luaL_typename(L, q));
  s = lua_tolstring(L, q, &len);

  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '%') {
      if (i + 2 >= len) FAIL("truncated %%XX at %zu in '%s'", i, s);
      if (!ishex((unsigned char)s[i + 1]) || !ishex((unsigned char)s[i + 2]))
        FAIL("bad %%XX at %zu in '%s'", i, s);
      i += 2;
    } else if (!unreserved(c) && c != '=' && c != '&' && c != ',') {
      FAIL("byte 0x%02x at %zu in the query '%s'", c, i, s);
    }
  }

  /* name=value&name=value..., known base filters in table order, each
  ** one set in the table, and every set base filter present */
  i = 0;
  while (i < len) {
    size_t end = i, eq;
    int k;
    while (end < len && s[end] != '&') end++;
    for (eq = i; eq < end && s[eq] != '='; eq++) {}
    if (eq == end) FAIL("part without '=' in '%s'", s);
    if (eq + 1 == end) FAIL("empty value in '%s'", s);
    if (memchr(s + eq + 1, '=', end - eq - 1))
      FAIL("two '=' in a part of '%s'", s);
    for (k = 0; k < NBASE; k++)
      if (strlen(names[k]) == eq - i && memcmp(names[k], s + i, eq - i) == 0)
        break;
    if (k == NBASE) FAIL("unknown or unsent name in '%s'", s);
    if (k <= last) FAIL("names out of order in '%s'", s);
    if (!is_set(ft, names[k]))
      FAIL("'%s' in the query but not in the filters", names[k]);
    last = k;
    nparts++;
    i = end + (end < len); /* skip '&' */
    if (end < len && end + 1 == len) FAIL("trailing '&' in '%s'", s);
  }
  for (i = 0; i < NBASE; i++) nset += (size_t)is_set(ft, names[i]);
  if (nparts != nset)
    FAIL("%zu filters set but %zu in the query '%s'", nset, nparts, s);

  /* the parts that are not sent */
  if (is_set(ft, "page") ? out.page < 1 : out.page != 0)
    FAIL("out.page is %lld", (long long)out.page);
  if (is_set(ft, "per_page") ? (out.per_page < 1 || out.per_page > 100)
                             : out.per_page != 0)
    FAIL("out.per_page is %lld", (long long)out.per_page);
  if (is_set(ft, "limit")) {
    if (cur.mode != OSVI_QUERY_ITERATE)
      FAIL("limit accepted for a single page");
    if (out.limit < 0) FAIL("out.limit is %lld", (long long)out.limit);
  } else if (out.limit != -1) {
    FAIL("out.limit is %lld without limit", (long long)out.limit);
  }
}

static int tostring_cb(lua_State *LL) {
  luaL_tolstring(LL, 1, NULL);
  return 1;
}

/* The usage error at e for the filters at ft. */
static void check_error(int ft, int e) {
  size_t len;
  if (!lua_istable(L, e)) {
    const char *m = lua_type(L, e) == LUA_TSTRING ? lua_tostring(L, e) : "";
    FAIL("raised a %s, not an error object %s", luaL_typename(L, e), m);
  }
  if (!lua_getmetatable(L, e)) FAIL("error object has no metatable");
  luaL_getmetatable(L, OSVI_ERROR_MT);
  if (!lua_rawequal(L, -1, -2))
    FAIL("error object's metatable is not " OSVI_ERROR_MT);
  lua_pop(L, 2);

  if (lua_getfield(L, e, "kind") != LUA_TSTRING ||
      strcmp(lua_tostring(L, -1), "usage") != 0)
    FAIL("error.kind is not 'usage'");
  lua_pop(L, 1);
  if (lua_getfield(L, e, "message") != LUA_TSTRING)
    FAIL("error.message is not a string");
  lua_tolstring(L, -1, &len);
  if (len == 0) FAIL("error.message is empty");
  lua_pop(L, 1);
  if (lua_getfield(L, e, "status") != LUA_TNIL)
    FAIL("a usage error has a status");
  lua_pop(L, 1);

  /* key: the filter at fault, a key of the table; absent only when the
  ** filters are not a table or have a key that is not a name */
  switch (lua_getfield(L, e, "key")) {
    case LUA_TSTRING:
      if (!cur.have_table)
        FAIL("error.key '%s' without a filter table", lua_tostring(L, -1));
      lua_pushvalue(L, -1);
      if (lua_rawget(L, ft) == LUA_TNIL && !(cur.nul_key && allowed("key-nul")))
        FAIL("error.key '%s' is not a key of the filters", lua_tostring(L, -2));
      lua_pop(L, 1);
      break;
    case LUA_TNIL:
      if (cur.have_table && !cur.nonstring_key) FAIL("error.key is missing");
      break;
    default: FAIL("error.key is a %s", luaL_typename(L, -1));
  }
  lua_pop(L, 1);

  lua_pushcfunction(L, tostring_cb);
  lua_pushvalue(L, e);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) FAIL("tostring(err) raised");
  if (strncmp(lua_tostring(L, -1), "osvi: usage: ", 13) != 0)
    FAIL("tostring(err) is '%s'", lua_tostring(L, -1));
  lua_pop(L, 1);
}

/* ------------------------------------------------------------------------
** libFuzzer entry points
** --------------------------------------------------------------------- */

static int init_cb(lua_State *LL) {
  osvi_error_open(LL);
  return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  verbose = getenv("OSVI_FUZZ_VERBOSE") != NULL;
  L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  lua_pushcfunction(L, init_cb);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) abort();
  lua_settop(L, 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r;
  unsigned h, container;
  int ft, ops, status;
  if (size < 1) return 0;
  r.p = data;
  r.n = size;
  h = get(&r);
  memset(&cur, 0, sizeof cur);
  cur.size = size;
  cur.mode = (h & 1) ? OSVI_QUERY_ITERATE : OSVI_QUERY_PAGE;
  container = (h >> 1) & 7;

  lua_settop(L, 0);
  if (container <= 5) {
    cur.have_table = 1;
    lua_newtable(L);
    for (ops = 0; ops < MAX_OPS && r.n > 0; ops++) {
      push_key(&r);
      push_value(&r, 0);
      lua_rawset(L, 1);
    }
  } else if (container == 6) {
    lua_pushnil(L);
  } else {
    push_value(&r, 0); /* may still be a table: an array */
    cur.have_table = lua_istable(L, 1);
  }
  ft = 1;
  if (cur.have_table) { /* any key that is not a string in the table? */
    lua_pushnil(L);
    while (lua_next(L, ft)) {
      if (lua_type(L, -2) != LUA_TSTRING) {
        cur.nonstring_key = 1;
      } else {
        size_t len;
        const char *k =
            lua_tolstring(L, -2, &len); /* a string: no conversion */
        if (memchr(k, '\0', len) != NULL) cur.nul_key = 1;
      }
      lua_pop(L, 1);
    }
  }

  out.page = out.per_page = out.limit = 12345; /* must be overwritten */
  lua_pushcfunction(L, query_cb);
  lua_pushvalue(L, ft);
  status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_OK) {
    if (!cur.have_table && !lua_isnil(L, ft))
      FAIL("accepted a %s as filters", luaL_typename(L, ft));
    check_query(ft, 2);
    /* the same filters give the same bytes */
    {
      size_t l1, l2;
      const char *q1 = lua_tolstring(L, 2, &l1), *q2;
      lua_pushcfunction(L, query_cb);
      lua_pushvalue(L, ft);
      if (lua_pcall(L, 1, 1, 0) != LUA_OK) FAIL("second check raised");
      q2 = lua_tolstring(L, -1, &l2);
      if (l1 != l2 || memcmp(q1, q2, l1) != 0) FAIL("not deterministic");
      lua_settop(L, 2);
    }
    lua_pushcfunction(L, full_cb);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) FAIL("osvi_query_push_full raised");
    check_full(2, 3);
    if (verbose) fprintf(stderr, "query: '%s'\n", lua_tostring(L, 2));
  } else if (status == LUA_ERRRUN) {
    check_error(ft, 2);
    if (verbose) {
      lua_getfield(L, 2, "message");
      fprintf(stderr, "usage error: %s\n", lua_tostring(L, -1));
    }
  } else {
    FAIL("lua_pcall returned %d", status);
  }

  lua_settop(L, 0);
  if (++runs % GC_EVERY == 0) lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
