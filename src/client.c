/*
** The client: options, one reused libcurl easy handle (so every page of an
** iteration rides one keep-alive connection), retries with backoff, and
** the module's page/calls functions through a default client.
*/
#include <errno.h>
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "osvi.h"

#define MAX_RETRY_AFTER 120 /* seconds: longer waits are returned, not slept */
#define MAX_BACKOFF 60.0    /* seconds */

static const char default_key = 'c'; /* registry[&default_key] = client */

/* ------------------------------------------------------------------------
** Options
** --------------------------------------------------------------------- */

static const char *const option_names[] = {
    "token",
    "base_url",
    "timeout",
    "connect_timeout",
    "max_retries",
    "retry_base",
    "max_response_bytes",
    "user_agent",
    "ca_file",
    "proxy",
    "stall_timeout",
    "prefetch",
    "log",
    NULL,
};

static void reject_unknown_options(lua_State *L, int idx) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int i;
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      osvi_usage_error(L, NULL, "osvi.new: option names are strings, got %s",
                       luaL_typename(L, -1));
    for (i = 0; option_names[i] != NULL; i++)
      if (strlen(option_names[i]) == lua_rawlen(L, -1) &&
          strcmp(option_names[i], lua_tostring(L, -1)) == 0)
        break;
    if (option_names[i] == NULL)
      osvi_usage_error_at(L, -1, "osvi.new: unknown option '%s'",
                          lua_tostring(L, -1));
  }
}

/* Pushes opts[key], or the environment variable env when it is nil and
** env is given. Leaves the value (maybe nil) at the top. */
static void get_option(lua_State *L, int opts, const char *key,
                       const char *env) {
  lua_getfield(L, opts, key);
  if (lua_isnil(L, -1) && env != NULL) {
    const char *v = getenv(env);
    if (v != NULL && *v != '\0') {
      lua_pop(L, 1);
      lua_pushstring(L, v);
    }
  }
}

static const char *opt_string(lua_State *L, int opts, const char *key,
                              const char *env) {
  get_option(L, opts, key, env);
  if (lua_isnil(L, -1)) return NULL;
  if (lua_type(L, -1) != LUA_TSTRING)
    osvi_usage_error(L, key, "option '%s': expected a string, got %s", key,
                     luaL_typename(L, -1));
  if (strlen(lua_tostring(L, -1)) != lua_rawlen(L, -1))
    osvi_usage_error(L, key, "option '%s': contains a zero byte", key);
  return lua_tostring(L, -1); /* stays on the stack until osvi.new returns */
}

static double opt_number(lua_State *L, int opts, const char *key, double def,
                         double min, double max) {
  double v;
  get_option(L, opts, key, NULL);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  if (lua_type(L, -1) != LUA_TNUMBER)
    osvi_usage_error(L, key, "option '%s': expected a number, got %s", key,
                     luaL_typename(L, -1));
  v = lua_tonumber(L, -1);
  if (!(v >= min && v <= max))
    osvi_usage_error(L, key,
                     "option '%s': expected a number from %f to %f, "
                     "got %s",
                     key, min, max, luaL_tolstring(L, -1, NULL));
  lua_pop(L, 1);
  return v;
}

static lua_Integer opt_integer(lua_State *L, int opts, const char *key,
                               lua_Integer def, lua_Integer min,
                               lua_Integer max) {
  lua_Integer v;
  int ok;
  get_option(L, opts, key, NULL);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return def;
  }
  v = lua_tointegerx(L, -1, &ok);
  if (lua_type(L, -1) != LUA_TNUMBER || !ok || v < min || v > max)
    osvi_usage_error(L, key,
                     "option '%s': expected an integer from %I to %I,"
                     " got %s",
                     key, (LUAI_UACINT)min, (LUAI_UACINT)max,
                     luaL_tolstring(L, -1, NULL));
  lua_pop(L, 1);
  return v;
}

/* 16 printable, non-space ASCII characters. The message never shows it. */
static void check_token(lua_State *L, const char *t) {
  size_t i, len;
  if (t == NULL)
    osvi_usage_error(L, "token",
                     "no API token: pass token = ... to "
                     "osvi.new or set OSVI_API_TOKEN");
  /* t is not NULL here: osvi_usage_error raises (lua_error), never returns */
  /* cppcheck-suppress nullPointerRedundantCheck */
  len = strlen(t); /* NOLINT(clang-analyzer-core.NonNullParamChecker) */
  for (i = 0; i < len; i++)
    if (t[i] < 0x21 || t[i] > 0x7e)
      osvi_usage_error(L, "token",
                       "option 'token': expected 16 printable, "
                       "non-space ASCII characters; character %d is not",
                       (int)i + 1);
  if (len != 16)
    osvi_usage_error(L, "token",
                     "option 'token': expected 16 printable, "
                     "non-space ASCII characters, got %d characters",
                     (int)len);
}

static void check_base_url(lua_State *L, const char *u) {
  size_t i;
  if (strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0)
    osvi_usage_error(L, "base_url",
                     "option 'base_url': expected an http:// "
                     "or https:// URL, got '%s'",
                     u);
  for (i = 0; u[i] != '\0'; i++)
    if ((unsigned char)u[i] <= 0x20 || u[i] == '?' || u[i] == '#' ||
        u[i] == 0x7f)
      osvi_usage_error(L, "base_url",
                       "option 'base_url': expected a URL "
                       "without spaces, query or fragment, got '%s'",
                       u);
}

/* ------------------------------------------------------------------------
** Construction and lifetime
** --------------------------------------------------------------------- */

static int client_close(lua_State *L) {
  osvi_client *c = luaL_checkudata(L, 1, OSVI_CLIENT_MT);
  osvi_http_free(&c->http);
  free(c->base_url);
  c->base_url = NULL;
  c->closed = 1;
  return 0;
}

/* osvi.new([options]) -> client */
static int client_new(lua_State *L) {
  osvi_client *c;
  osvi_http_options o;
  const char *token, *base, *ua, *err;
  size_t blen;
  int opts;

  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  if (!lua_istable(L, 1))
    osvi_usage_error(L, NULL, "osvi.new: expected a table of options, got %s",
                     luaL_typename(L, 1));
  lua_settop(L, 1);
  opts = 1;
  reject_unknown_options(L, opts);

  /* Created closed, with its metatable, before anything is acquired: an
  ** error from here on leaves a consistent object for __gc. */
  c = lua_newuserdatauv(L, sizeof *c, 1); /* uservalue: the prefetch pool */
  memset(c, 0, sizeof *c);
  c->closed = 1;
  luaL_setmetatable(L, OSVI_CLIENT_MT);

  memset(&o, 0, sizeof o);
  token = opt_string(L, opts, "token", "OSVI_API_TOKEN");
  check_token(L, token);
  o.token = token;
  base = opt_string(L, opts, "base_url", "OSVI_BASE_URL");
  if (base == NULL) base = "https://api.osvi.ai";
  check_base_url(L, base);
  o.timeout_ms =
      (long)(opt_number(L, opts, "timeout", 30, 0.001, 86400) * 1000);
  o.connect_timeout_ms =
      (long)(opt_number(L, opts, "connect_timeout", 10, 0.001, 86400) * 1000);
  o.stall_s = (long)ceil(opt_number(L, opts, "stall_timeout", 15, 1, 86400));
  c->max_retries = (int)opt_integer(L, opts, "max_retries", 2, 0, 10);
  c->prefetch = (int)opt_integer(L, opts, "prefetch", OSVI_DEFAULT_PREFETCH, 0,
                                 OSVI_MAX_PREFETCH);
  get_option(L, opts, "log", NULL);
  if (lua_isnil(L, -1)) {
    const char *env = getenv("OSVI_LOG");
    c->log = env != NULL && *env != '\0' && strcmp(env, "0") != 0;
  } else if (lua_isboolean(L, -1)) {
    c->log = lua_toboolean(L, -1);
  } else {
    osvi_usage_error(L, "log", "option 'log': expected a boolean, got %s",
                     luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  c->retry_base = opt_number(L, opts, "retry_base", 0.5, 0, 60);
  o.max_bytes = (size_t)opt_integer(L, opts, "max_response_bytes",
                                    (lua_Integer)32 * 1024 * 1024, 1024,
                                    (lua_Integer)1 << 40);
  ua = opt_string(L, opts, "user_agent", NULL);
  if (ua == NULL) {
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    ua = lua_pushfstring(L, "osvi-lua/%s libcurl/%s %s", OSVI_VERSION,
                         v->version, LUA_VERSION);
  }
  o.user_agent = ua;
  o.ca_file = opt_string(L, opts, "ca_file", NULL);
  o.proxy = opt_string(L, opts, "proxy", NULL);

  blen = strlen(base);
  while (blen > 0 && base[blen - 1] == '/') blen--;
  c->base_url = malloc(blen + 1);
  if (c->base_url == NULL) return luaL_error(L, "not enough memory");
  memcpy(c->base_url, base, blen);
  c->base_url[blen] = '\0';

  c->closed = 0;
  err = osvi_http_init(&c->http, &o);
  if (err != NULL) {
    lua_pushvalue(L, 2);
    client_close(L);
    return luaL_error(L, "osvi.new: %s", err);
  }
  c->rng =
      (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)c ^ 0x9E3779B97F4A7C15ULL;
  lua_settop(L, 2);
  return 1;
}

osvi_client *osvi_client_check(lua_State *L, int idx) {
  osvi_client *c = luaL_checkudata(L, idx, OSVI_CLIENT_MT);
  if (c->closed) osvi_usage_error(L, NULL, "the client is closed");
  return c;
}

osvi_pool *osvi_client_pool(lua_State *L, int cidx) {
  osvi_pool *p;
  osvi_client *c;
  cidx = lua_absindex(L, cidx);
  c = osvi_client_check(L, cidx);
  if (lua_getiuservalue(L, cidx, 1) == LUA_TUSERDATA) {
    p = lua_touserdata(L, -1);
    if (!osvi_pool_busy(p)) return p;
  }
  lua_pop(L, 1);
  /* none yet, or held by another cursor: this one gets its own */
  p = osvi_pool_new(L, cidx,
                    c->prefetch > 0 ? c->prefetch : 1); /* poll() needs one */
  if (lua_getiuservalue(L, cidx, 1) != LUA_TUSERDATA) {
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, cidx, 1); /* kept for the next cursor */
  }
  lua_pop(L, 1);
  return p;
}

static int client_tostring(lua_State *L) {
  osvi_client *c = luaL_checkudata(L, 1, OSVI_CLIENT_MT);
  if (c->closed)
    lua_pushliteral(L, "osvi.Client (closed)");
  else /* the token is never shown */
    lua_pushfstring(L, "osvi.Client (%p, %s)", (void *)c, c->base_url);
  return 1;
}

void osvi_client_push_default(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &default_key) != LUA_TNIL) return;
  lua_pop(L, 1);
  lua_pushcfunction(L, client_new);
  lua_call(L, 0, 1);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &default_key);
}

/* ------------------------------------------------------------------------
** Fetching with retries
** --------------------------------------------------------------------- */

static double jitter01(osvi_client *c) {
  uint64_t x = c->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  c->rng = x;
  return (double)(x >> 11) / 9007199254740992.0;
}

static void sleep_seconds(double s) {
  struct timespec ts;
  if (s <= 0) return;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int retryable_status(long s) {
  return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504;
}

/* Connection failures and timeouts are worth another try; DNS and TLS
** failures are not: they will not fix themselves in a second. */
static int retryable_curl(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT: return 1;
    default: return 0;
  }
}

int osvi_client_retry(osvi_client *c, const osvi_http *h, CURLcode rc,
                      long status, int attempt, double *delay) {
  int retry = rc == CURLE_OK ? retryable_status(status)
                             : retryable_curl(rc) && !h->too_large;
  /* requests actually sent, counting libcurl's own re-sends, are bounded
  ** by the budget */
  if (!retry || attempt > c->max_retries || h->sent >= h->budget) return 0;
  if (h->retry_after > MAX_RETRY_AFTER) return 0; /* returned, not slept */
  if (h->retry_after >= 0) {
    *delay = (double)h->retry_after;
  } else {
    double d = c->retry_base * pow(2.0, attempt - 1);
    if (d > MAX_BACKOFF) d = MAX_BACKOFF;
    *delay = d / 2 + d / 2 * jitter01(c);
  }
  return 1;
}

/* Pushes the error object for a transfer that did not complete. */
static void push_curl_error(lua_State *L, const osvi_http *h, CURLcode rc,
                            long status) {
  const char *detail = h->errbuf[0] ? h->errbuf : curl_easy_strerror(rc);
  if (h->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
    osvi_error_push(L, OSVI_E_TOO_LARGE, status,
                    "the response is larger than max_response_bytes (%I)",
                    (LUAI_UACINT)h->max_bytes);
  } else if (h->over_budget) {
    osvi_error_push(L, OSVI_E_NETWORK, status,
                    "the connection closed before an answer, and the "
                    "retries are spent (1 + max_retries requests sent)");
  } else if (h->out_of_memory) {
    osvi_error_push(L, OSVI_E_NETWORK, status,
                    "not enough memory for the response");
  } else if (rc == CURLE_OPERATION_TIMEDOUT) {
    osvi_error_push(L, OSVI_E_TIMEOUT, status, "%s", detail);
  } else {
    osvi_error_push(L, OSVI_E_NETWORK, status, "%s", detail);
  }
  lua_pushinteger(L, (lua_Integer)rc);
  osvi_error_set(L, "curl_code");
}

int osvi_client_result(lua_State *L, const osvi_http *h, CURLcode rc,
                       long status, int attempt, double elapsed) {
  if (rc == CURLE_OK && osvi_decode_response(L, status, h->body ? h->body : "",
                                             h->len, h->retry_after)) {
    /* how the page was fetched: page.fetch = {status, attempts, elapsed} */
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_pushinteger(L, h->sent > attempt ? h->sent : attempt);
    lua_setfield(L, -2, "attempts");
    lua_pushnumber(L, elapsed);
    lua_setfield(L, -2, "elapsed");
    lua_pushinteger(L, (lua_Integer)h->len);
    lua_setfield(L, -2, "bytes");
    lua_setfield(L, -2, "fetch");
    return 1;
  }
  if (rc != CURLE_OK) push_curl_error(L, h, rc, status);
  lua_pushinteger(L, h->sent > attempt ? h->sent : attempt);
  osvi_error_set(L, "attempts");
  return 0;
}

void osvi_client_log(const osvi_client *c, const osvi_http *h, CURLcode rc,
                     long status, int attempt) {
  char *url = NULL;
  double secs = 0;
  const char *path;
  if (!c->log) return;
  curl_easy_getinfo(h->easy, CURLINFO_EFFECTIVE_URL, &url);
  curl_easy_getinfo(h->easy, CURLINFO_TOTAL_TIME, &secs);
  /* the path and query only: no scheme, host or credentials; the token is
  ** a header and never appears here */
  path = url != NULL ? strstr(url, "/v1/calls") : NULL;
  if (rc == CURLE_OK)
    (void)fprintf(stderr,
                  "osvi: GET %s -> %ld, attempt %d, %lu bytes, %.1f ms\n",
                  path ? path : "/v1/calls", status, attempt,
                  (unsigned long)h->len, secs * 1000);
  else
    (void)fprintf(stderr, "osvi: GET %s -> failed (%s), attempt %d, %.1f ms\n",
                  path ? path : "/v1/calls", curl_easy_strerror(rc), attempt,
                  secs * 1000);
}

void osvi_client_url(lua_State *L, osvi_client *c, const char *query) {
  lua_pushfstring(L, "%s/v1/calls%s%s", c->base_url, *query ? "?" : "", query);
}

int osvi_client_fetch(lua_State *L, osvi_client *c, const char *query) {
  int attempt;
  const char *url;
  osvi_client_url(L, c, query);
  url = lua_tostring(L, -1);
  double started = osvi_now();
  osvi_http_budget(&c->http, 1 + c->max_retries);
  for (attempt = 1;; attempt++) {
    long status;
    double delay;
    CURLcode rc = osvi_http_get(&c->http, url, &status);
    osvi_client_log(c, &c->http, rc, status, attempt);
    if (osvi_client_retry(c, &c->http, rc, status, attempt, &delay)) {
      sleep_seconds(delay);
      continue;
    }
    lua_remove(L, -1); /* the url */
    return osvi_client_result(L, &c->http, rc, status, attempt,
                              osvi_now() - started);
  }
}

/* ------------------------------------------------------------------------
** Lua functions
** --------------------------------------------------------------------- */

/* One page with the client at cidx and filters at fidx: page | nil, err */
static int page_with(lua_State *L, int cidx, int fidx) {
  osvi_client *c = osvi_client_check(L, cidx);
  osvi_filters f;
  osvi_query_check(L, fidx, OSVI_QUERY_PAGE, &f);
  osvi_query_push_full(L, lua_tostring(L, -1), f.page, f.per_page);
  if (osvi_client_fetch(L, c, lua_tostring(L, -1))) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

static int client_page(lua_State *L) { return page_with(L, 1, 2); }

/* How many calls match: one request for one call, meta.total_count. */
static int count_with(lua_State *L, int cidx, int fidx) {
  osvi_client *c = osvi_client_check(L, cidx);
  osvi_filters f;
  osvi_query_check(L, fidx, OSVI_QUERY_PAGE, &f);
  osvi_query_push_full(L, lua_tostring(L, -1), 0, 1);
  if (!osvi_client_fetch(L, c, lua_tostring(L, -1))) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  lua_getfield(L, -1, "meta");
  lua_getfield(L, -1, "total_count");
  return 1;
}

static int client_count(lua_State *L) { return count_with(L, 1, 2); }

static int module_count(lua_State *L) {
  lua_settop(L, 1);
  osvi_client_push_default(L);
  return count_with(L, 2, 1);
}

/* osvi.decode(status, body [, retry_after]) -> page | nil, err: the same
** decoding and error kinds as the built-in transport, for other transports
** (OpenResty's cosockets or subrequests). retry_after is the Retry-After
** header as received (seconds or an HTTP date) or a number of seconds. */
static int module_decode(lua_State *L) {
  size_t len;
  lua_Integer status = luaL_checkinteger(L, 1);
  const char *body = luaL_checklstring(L, 2, &len);
  lua_Integer retry_after = -1;
  if (lua_type(L, 3) == LUA_TSTRING) {
    size_t rlen;
    const char *r = lua_tolstring(L, 3, &rlen);
    retry_after = osvi_http_retry_after(r, rlen);
  } else if (!lua_isnoneornil(L, 3)) {
    lua_Number n = luaL_checknumber(L, 3);
    retry_after = n >= 0 && n < 1e9 ? (lua_Integer)ceil(n) : -1;
  }
  lua_settop(L, 3);
  if (osvi_decode_response(L, (long)status, body, len, (long)retry_after))
    return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

static int client_calls(lua_State *L) {
  osvi_client_check(L, 1);
  return osvi_cursor_new(L, 1, 2);
}

static int module_page(lua_State *L) {
  lua_settop(L, 1);
  osvi_client_push_default(L);
  return page_with(L, 2, 1);
}

static int module_calls(lua_State *L) {
  lua_settop(L, 1);
  osvi_client_push_default(L);
  return osvi_cursor_new(L, 2, 1);
}

int osvi_client_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"page", client_page},
                                     {"calls", client_calls},
                                     {"count", client_count},
                                     {"close", client_close},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {
      {"__index", NULL},
      {"__gc", client_close},
      OSVI_REG_CLOSE(client_close) /* 5.4: __close */
      {"__tostring", client_tostring},
      {NULL, NULL}};
  static const luaL_Reg functions[] = {
      {"new", client_new},       {"page", module_page},
      {"calls", module_calls},   {"count", module_count},
      {"decode", module_decode}, {NULL, NULL}};
  if (luaL_newmetatable(L, OSVI_CLIENT_MT)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, functions, 0);
  return 0;
}
