/*
** Filters: checking a Lua filter table and building the query string.
**
** One row per filter in OSVI_FILTERS drives the unknown-key check, the
** order of the query (fixed, so a query is byte-for-byte predictable) and
** the check that encodes each value. Every check runs before any request,
** and a bad value raises a usage error that names the key, the value and
** what was expected.
*/
#include <math.h>
#include <string.h>

#include "osvi.h"

typedef struct check_state {
  osvi_query_mode mode;
  osvi_filters *out;
  int have_start, have_end;
  int64_t start_lo, end_hi; /* milliseconds */
} check_state;

/* A check reads the value at `v` and pushes its encoded form, or pushes
** nothing (returns 0) for the keys that are not part of the base query. */
typedef int (*check_fn)(lua_State *L, int v, const char *key, check_state *st);

static int check_status(lua_State *L, int v, const char *key, check_state *st);
static int check_agent(lua_State *L, int v, const char *key, check_state *st);
static int check_id(lua_State *L, int v, const char *key, check_state *st);
static int check_phone(lua_State *L, int v, const char *key, check_state *st);
static int check_call_type(lua_State *L, int v, const char *key,
                           check_state *st);
static int check_date(lua_State *L, int v, const char *key, check_state *st);
static int check_page(lua_State *L, int v, const char *key, check_state *st);
static int check_per_page(lua_State *L, int v, const char *key,
                          check_state *st);
static int check_limit(lua_State *L, int v, const char *key, check_state *st);

/* name, check — in the order the query string is built */
#define OSVI_FILTERS(X)           \
  X(status, check_status)         \
  X(agent_uuid, check_agent)      \
  X(campaign_id, check_id)        \
  X(campaign_upload_id, check_id) \
  X(phone_number, check_phone)    \
  X(call_type, check_call_type)   \
  X(start_date, check_date)       \
  X(end_date, check_date)         \
  X(page, check_page)             \
  X(per_page, check_per_page)     \
  X(limit, check_limit)

static const struct {
  const char *name;
  check_fn check;
} filters[] = {
#define OSVI_FILTER_ROW(name, fn) {#name, fn},
    OSVI_FILTERS(OSVI_FILTER_ROW)
#undef OSVI_FILTER_ROW
};

#define NFILTERS (sizeof(filters) / sizeof(filters[0]))

static const char *const filter_names[] = {
#define OSVI_FILTER_NAME(name, fn) #name,
    OSVI_FILTERS(OSVI_FILTER_NAME)
#undef OSVI_FILTER_NAME
        NULL};

/* The longest query string a request may have, page and per_page
** included: a request line stays far below what libcurl sends (1 MB for a
** URL), and a mistake (a status list of a million entries) is a usage
** error before any request rather than a failure after. */
#define OSVI_MAX_QUERY 65536 /* 64 KiB */

static const char *const statuses[] = {
    "picked", "not_picked", "failed", "busy", "voicemail", "in_progress", NULL};
static const char *const call_types[] = {"inbound", "outbound", NULL};

/* ------------------------------------------------------------------------
** Helpers
** --------------------------------------------------------------------- */

/* Pushes a short description of the value at v, for messages. */
static const char *describe(lua_State *L, int v) {
  if (lua_type(L, v) == LUA_TSTRING) {
    luaL_Buffer b;
    size_t len;
    const char *s = lua_tolstring(L, v, &len);
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '\'');
    luaL_addlstring(&b, s, len > 40 ? 37 : len);
    if (len > 40) luaL_addstring(&b, "...");
    luaL_addchar(&b, '\'');
    luaL_pushresult(&b);
    return lua_tostring(L, -1);
  }
  if (lua_type(L, v) == LUA_TNUMBER) return luaL_tolstring(L, v, NULL);
  return lua_pushfstring(L, "a %s", luaL_typename(L, v));
}

static int bad_value(lua_State *L, int v, const char *key,
                     const char *expected) {
  const char *got = describe(L, v);
  return osvi_usage_error(L, key, "filter '%s': expected %s, got %s", key,
                          expected, got);
}

/* ASCII letters and digits, whatever the C locale says (isalnum would let
** a Latin-1 letter through under a Latin-1 locale). */
#define IS_ALNUM(c)                                            \
  (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z') || \
   ((c) >= '0' && (c) <= '9'))

/* Pushes s percent-encoded per RFC 3986: only unreserved bytes stay. */
static void push_encoded(lua_State *L, const char *s, size_t len) {
  static const char hex[] = "0123456789ABCDEF";
  luaL_Buffer b;
  size_t i;
  luaL_buffinit(L, &b);
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (IS_ALNUM(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      luaL_addchar(&b, (char)c);
    } else {
      luaL_addchar(&b, '%');
      luaL_addchar(&b, hex[c >> 4]);
      luaL_addchar(&b, hex[c & 15]);
    }
  }
  luaL_pushresult(&b);
}

/* An integer given as a Lua integer, an integral float or a string of
** digits. Returns 1 and sets *out, or 0. */
static int to_integer(lua_State *L, int v, lua_Integer *out) {
  if (lua_type(L, v) == LUA_TNUMBER) {
    if (lua_isinteger(L, v)) {
      *out = lua_tointeger(L, v);
      return 1;
    }
    return lua_numbertointeger(floor(lua_tonumber(L, v)), out) &&
           (lua_Number)*out == lua_tonumber(L, v);
  }
  if (lua_type(L, v) == LUA_TSTRING) {
    size_t len, i;
    const char *s = lua_tolstring(L, v, &len);
    lua_Integer n = 0;
    if (len == 0 || len > 18) return 0;
    for (i = 0; i < len; i++) {
      if (s[i] < '0' || s[i] > '9') return 0;
      n = n * 10 + (s[i] - '0');
    }
    *out = n;
    return 1;
  }
  return 0;
}

static int in_list(const char *const *list, const char *s, size_t len) {
  for (; *list != NULL; list++)
    if (strlen(*list) == len && memcmp(*list, s, len) == 0) return 1;
  return 0;
}

static void push_integer_string(lua_State *L, lua_Integer n) {
  lua_pushfstring(L, "%I", (LUAI_UACINT)n);
}

/* ------------------------------------------------------------------------
** Checks
** --------------------------------------------------------------------- */

#define STATUS_EXPECTED                                                   \
  "a status (picked, not_picked, failed, busy, voicemail, in_progress), " \
  "a comma-separated list of them or an array of them"

/* Adds one status (s, len) to the buffer after checking it. */
static void add_status(lua_State *L, luaL_Buffer *b, int *n, const char *key,
                       const char *s, size_t len) {
  while (len > 0 && *s == ' ') s++, len--;
  while (len > 0 && s[len - 1] == ' ') len--;
  if (!in_list(statuses, s, len)) {
    lua_pushlstring(L, s, len);
    bad_value(L, lua_gettop(L), key, STATUS_EXPECTED);
  }
  if ((*n)++ > 0) luaL_addchar(b, ','); /* joined by a literal comma */
  luaL_addlstring(b, s, len);
}

static int check_status(lua_State *L, int v, const char *key, check_state *st) {
  luaL_Buffer b;
  int n = 0;
  (void)st;
  if (lua_type(L, v) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, v, &len), *end = s + len, *comma;
    if (len == 0) bad_value(L, v, key, STATUS_EXPECTED);
    luaL_buffinit(L, &b);
    for (;;) {
      comma = memchr(s, ',', (size_t)(end - s));
      add_status(L, &b, &n, key, s, (size_t)((comma ? comma : end) - s));
      if (comma == NULL) break;
      s = comma + 1;
    }
  } else if (lua_type(L, v) == LUA_TTABLE) {
    lua_Integer i, len = (lua_Integer)lua_rawlen(L, v);
    if (len == 0) bad_value(L, v, key, STATUS_EXPECTED);
    /* check every element before the buffer takes the stack */
    for (i = 1; i <= len; i++) {
      size_t slen;
      const char *s;
      lua_rawgeti(L, v, i);
      if (lua_type(L, -1) != LUA_TSTRING)
        bad_value(L, lua_gettop(L), key, STATUS_EXPECTED);
      s = lua_tolstring(L, -1, &slen);
      if (!in_list(statuses, s, slen))
        bad_value(L, lua_gettop(L), key, STATUS_EXPECTED);
      lua_pop(L, 1);
    }
    luaL_buffinit(L, &b);
    for (i = 1; i <= len; i++) {
      lua_rawgeti(L, v, i);
      if (n++ > 0) luaL_addchar(&b, ',');
      luaL_addvalue(&b);
    }
  } else {
    return bad_value(L, v, key, STATUS_EXPECTED);
  }
  luaL_pushresult(&b);
  return 1;
}

static int check_agent(lua_State *L, int v, const char *key, check_state *st) {
  static const char expected[] =
      "'agent_' followed by letters, digits, '-' or '_'";
  size_t len, i;
  const char *s;
  (void)st;
  if (lua_type(L, v) != LUA_TSTRING) return bad_value(L, v, key, expected);
  s = lua_tolstring(L, v, &len);
  if (len <= 6 || len > 128 || memcmp(s, "agent_", 6) != 0)
    return bad_value(L, v, key, expected);
  for (i = 6; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!IS_ALNUM(c) && c != '-' && c != '_')
      return bad_value(L, v, key, expected);
  }
  push_encoded(L, s, len);
  return 1;
}

#define INTEGER_EXPECTED(what) \
  what " (an integer, an integral number or a string of digits)"

static int check_id(lua_State *L, int v, const char *key, check_state *st) {
  lua_Integer n;
  (void)st;
  if (!to_integer(L, v, &n) || n < 1)
    return bad_value(L, v, key, INTEGER_EXPECTED("a positive integer"));
  push_integer_string(L, n);
  return 1;
}

static int check_phone(lua_State *L, int v, const char *key, check_state *st) {
  static const char expected[] =
      "a string of 1 to 15 digits with an optional leading '+'";
  size_t len, i;
  const char *s;
  (void)st;
  if (lua_type(L, v) != LUA_TSTRING) return bad_value(L, v, key, expected);
  s = lua_tolstring(L, v, &len);
  i = (len > 0 && s[0] == '+');
  if (len - i < 1 || len - i > 15) return bad_value(L, v, key, expected);
  for (; i < len; i++)
    if (s[i] < '0' || s[i] > '9') return bad_value(L, v, key, expected);
  push_encoded(L, s, len);
  return 1;
}

static int check_call_type(lua_State *L, int v, const char *key,
                           check_state *st) {
  size_t len;
  const char *s;
  (void)st;
  if (lua_type(L, v) != LUA_TSTRING)
    return bad_value(L, v, key, "'inbound' or 'outbound'");
  s = lua_tolstring(L, v, &len);
  if (!in_list(call_types, s, len))
    return bad_value(L, v, key, "'inbound' or 'outbound'");
  lua_pushvalue(L, v);
  return 1;
}

#define DATE_EXPECTED                                                    \
  "a date YYYY-MM-DD (IST), a timestamp YYYY-MM-DDThh:mm:ss[.fff] with " \
  "Z or +hh:mm, or integer epoch seconds"

static int check_date(lua_State *L, int v, const char *key, check_state *st) {
  int64_t lo, hi;
  if (lua_type(L, v) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, v, &len);
    const char *why = osvi_time_parse(s, len, &lo, &hi);
    if (why != NULL) {
      /* what is wrong with it, unless that only says what was expected */
      const char *got = describe(L, v);
      if (strncmp(why, "expected", 8) == 0)
        return bad_value(L, v, key, DATE_EXPECTED);
      return osvi_usage_error(L, key, "filter '%s': expected %s, got %s (%s)",
                              key, DATE_EXPECTED, got, why);
    }
    push_encoded(L, s, len);
  } else {
    lua_Integer t;
    char iso[32];
    if (lua_type(L, v) != LUA_TNUMBER || !to_integer(L, v, &t) ||
        osvi_time_format_ist((int64_t)t, iso) != 0)
      return bad_value(L, v, key, DATE_EXPECTED);
    lo = hi = (int64_t)t * 1000;
    push_encoded(L, iso, strlen(iso));
  }
  if (key[0] == 's') {
    st->have_start = 1;
    st->start_lo = lo;
  } else {
    st->have_end = 1;
    st->end_hi = hi;
  }
  return 1;
}

static int check_page(lua_State *L, int v, const char *key, check_state *st) {
  lua_Integer n;
  if (!to_integer(L, v, &n) || n < 1)
    return bad_value(L, v, key, INTEGER_EXPECTED("a page number from 1"));
  st->out->page = n;
  return 0;
}

static int check_per_page(lua_State *L, int v, const char *key,
                          check_state *st) {
  lua_Integer n;
  if (!to_integer(L, v, &n) || n < 1 || n > 100)
    return bad_value(L, v, key, INTEGER_EXPECTED("an integer from 1 to 100"));
  st->out->per_page = n;
  return 0;
}

static int check_limit(lua_State *L, int v, const char *key, check_state *st) {
  lua_Integer n;
  if (st->mode != OSVI_QUERY_ITERATE)
    return osvi_usage_error(L, key,
                            "filter 'limit' is for iteration (calls()), "
                            "not for a single page");
  if (!to_integer(L, v, &n) || n < 0)
    return bad_value(L, v, key, INTEGER_EXPECTED("a non-negative integer"));
  st->out->limit = n;
  return 0;
}

/* ------------------------------------------------------------------------
** Driver
** --------------------------------------------------------------------- */

/* Edit distance, for "did you mean". Names are short; longer keys are
** simply not compared. */
static size_t distance(const char *a, size_t la, const char *b) {
  size_t lb = strlen(b), i, j, row[33];
  if (la > 32 || lb > 32) return 99;
  for (j = 0; j <= lb; j++) row[j] = j;
  for (i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

static int known(const char *s, size_t len) {
  size_t i;
  for (i = 0; i < NFILTERS; i++)
    if (strlen(filters[i].name) == len && memcmp(filters[i].name, s, len) == 0)
      return 1;
  return 0;
}

const char *osvi_query_closest(const char *s, size_t len,
                               const char *const *names) {
  const char *best = NULL;
  size_t bestd = 3;
  for (; *names != NULL; names++) {
    size_t d = distance(s, len, *names);
    if (d < bestd) bestd = d, best = *names;
  }
  return best;
}

static void reject_unknown_keys(lua_State *L, int idx) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t len;
    const char *k, *best;
    lua_pop(L, 1); /* key */
    if (lua_type(L, -1) != LUA_TSTRING)
      osvi_usage_error(L, NULL, "filters: keys are names, got %s key",
                       luaL_typename(L, -1));
    k = lua_tolstring(L, -1, &len);
    if (known(k, len)) continue;
    best = osvi_query_closest(k, len, filter_names);
    if (best != NULL)
      osvi_usage_error_at(L, -1, "unknown filter '%s' (did you mean '%s'?)", k,
                          best);
    osvi_usage_error_at(L, -1, "unknown filter '%s'", k);
  }
}

void osvi_query_check(lua_State *L, int idx, osvi_query_mode mode,
                      osvi_filters *out) {
  check_state st;
  size_t i;
  int acc;
  memset(&st, 0, sizeof st);
  st.mode = mode;
  st.out = out;
  out->page = 0;
  out->per_page = 0;
  out->limit = -1;
  idx = lua_absindex(L, idx);
  if (lua_isnoneornil(L, idx)) {
    lua_pushliteral(L, "");
    return;
  }
  lua_pushliteral(L, "");
  acc = lua_gettop(L); /* the query built so far */
  if (!lua_istable(L, idx))
    osvi_usage_error(L, NULL, "filters: expected a table, got %s",
                     luaL_typename(L, idx));
  reject_unknown_keys(L, idx);
  for (i = 0; i < NFILTERS; i++) {
    int v;
    lua_getfield(L, idx, filters[i].name);
    v = lua_gettop(L);
    if (lua_isnil(L, v) || !filters[i].check(L, v, filters[i].name, &st)) {
      lua_settop(L, acc);
      continue;
    }
    /* what is added, with room for "&page=P&per_page=N" at the end */
    if (lua_rawlen(L, acc) + lua_rawlen(L, -1) + 64 > OSVI_MAX_QUERY)
      osvi_usage_error(L, filters[i].name,
                       "filter '%s': the query would be longer than a "
                       "request may be (%d bytes); this filter alone is %I "
                       "bytes",
                       filters[i].name, OSVI_MAX_QUERY,
                       (LUAI_UACINT)lua_rawlen(L, -1));
    /* acc .. value: acc = acc .. "&" .. name .. "=" .. encoded */
    lua_pushfstring(L, "%s%s%s=%s", lua_tostring(L, acc),
                    lua_rawlen(L, acc) > 0 ? "&" : "", filters[i].name,
                    lua_tostring(L, -1));
    lua_replace(L, acc);
    lua_settop(L, acc);
  }
  if (st.have_start && st.have_end && st.start_lo > st.end_hi) {
    const char *start, *end;
    lua_getfield(L, idx, "start_date");
    start = luaL_tolstring(L, -1, NULL);
    lua_getfield(L, idx, "end_date");
    end = luaL_tolstring(L, -1, NULL);
    osvi_usage_error(L, "start_date",
                     "filter 'start_date' (%s) is after 'end_date' (%s)", start,
                     end);
  }
}

void osvi_query_push_full(lua_State *L, const char *base, lua_Integer page,
                          lua_Integer per_page) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, base);
  if (page > 0) {
    if (*base) luaL_addchar(&b, '&');
    lua_pushfstring(L, "page=%I", (LUAI_UACINT)page);
    luaL_addvalue(&b);
  }
  if (per_page > 0) {
    if (*base || page > 0) luaL_addchar(&b, '&');
    lua_pushfstring(L, "per_page=%I", (LUAI_UACINT)per_page);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

/* osvi.query(filters): the query string client:page(filters) would send. */
static int l_query(lua_State *L) {
  osvi_filters f;
  osvi_query_check(L, 1, OSVI_QUERY_PAGE, &f);
  osvi_query_push_full(L, lua_tostring(L, -1), f.page, f.per_page);
  return 1;
}

int osvi_query_open(lua_State *L) {
  lua_pushcfunction(L, l_query);
  lua_setfield(L, -2, "query");
  return 0;
}
