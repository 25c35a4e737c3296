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
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "osvi.h"

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
    if (option_names[i] == NULL) {
      /* the filters' suggestion, over the option names */
      const char *best = osvi_query_closest(lua_tostring(L, -1),
                                            lua_rawlen(L, -1), option_names);
      if (best != NULL)
        osvi_usage_error_at(L, -1,
                            "osvi.new: unknown option '%s' (did you mean "
                            "'%s'?)",
                            lua_tostring(L, -1), best);
      osvi_usage_error_at(L, -1, "osvi.new: unknown option '%s'",
                          lua_tostring(L, -1));
    }
  }
}

/* Pushes opts[key], or the environment variable env when it is nil and
** env is given. Leaves the value (maybe nil) at the top; returns 1 when it
** came from the environment. */
static int get_option(lua_State *L, int opts, const char *key,
                      const char *env) {
  lua_getfield(L, opts, key);
  if (lua_isnil(L, -1) && env != NULL) {
    const char *v = getenv(env);
    if (v != NULL && *v != '\0') {
      lua_pop(L, 1);
      lua_pushstring(L, v);
      return 1;
    }
  }
  return 0;
}

/* A string option (or its environment variable), at most `max` bytes and
** without control characters: every one of them ends up in a header, a
** request line or a file name, where CR or LF would start a header of the
** caller's choosing and NUL would cut it short. The value is never shown
** in the message (it may be the token). */
static const char *opt_string(lua_State *L, int opts, const char *key,
                              const char *env, size_t max) {
  size_t len, i;
  const char *v, *from;
  if (get_option(L, opts, key, env))
    lua_pushfstring(L, " (from %s)", env);
  else
    lua_pushliteral(L, "");
  from = lua_tostring(L, -1);
  lua_insert(L, -2); /* from,value */
  if (lua_isnil(L, -1)) {
    lua_remove(L, -2);
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    osvi_usage_error(L, key, "option '%s': expected a string, got %s", key,
                     luaL_typename(L, -1));
  v = lua_tolstring(L, -1, &len);
  for (i = 0; i < len; i++)
    if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) {
      char byte[8];
      (void)snprintf(byte, sizeof byte, "0x%02X",
                     (unsigned)(unsigned char)v[i]);
      osvi_usage_error(L, key,
                       "option '%s'%s: expected no control characters (CR, "
                       "LF, NUL, tab, DEL...), got byte %s at position %d",
                       key, from, byte, (int)i + 1);
    }
  if (len > max)
    osvi_usage_error(L, key, "option '%s'%s: expected at most %d bytes, got %d",
                     key, from, (int)max, (int)len);
  lua_remove(L, -2); /* from */
  return v;          /* stays on the stack until osvi.new returns */
}

/* ------------------------------------------------------------------------
** URLs: base_url and proxy
** --------------------------------------------------------------------- */

#define MAX_URL 4096 /* bytes of base_url or proxy */

/* Pushes u with the password of its userinfo masked (or the user alone,
** when there is no password), for messages and the log: [-0, +1] */
static const char *push_masked(lua_State *L, const char *u) {
  size_t n = osvi_http_mask(NULL, 0, u, 1) + 1, i;
  char *buf = lua_newuserdatauv(L, n, 0);
  osvi_http_mask(buf, n, u, 1);
  for (i = 0; buf[i] != '\0'; i++) /* the log gets one line per line */
    if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f) buf[i] = '?';
  lua_pushstring(L, buf);
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

typedef struct url_parts {
  size_t scheme; /* length of the scheme ("http"), 0 when there is none */
  const char *host, *host_end; /* without the brackets of an IPv6 address */
  const char *path;            /* what follows the authority ("" or "/...") */
} url_parts;

/* Splits u, "scheme://[userinfo@]host[:port][/path]", or without
** "scheme://" when `bare` (a proxy). Returns NULL, or what is wrong. */
static const char *split_url(const char *u, int bare, url_parts *p) {
  const char *sep = strstr(u, "://"), *auth, *end, *at = NULL, *q;
  memset(p, 0, sizeof *p);
  if (sep != NULL && strcspn(u, "/@:") == (size_t)(sep - u)) {
    p->scheme = (size_t)(sep - u);
    auth = sep + 3;
  } else if (bare) {
    auth = u;
  } else {
    return "scheme";
  }
  end = auth + strcspn(auth, "/");
  for (q = auth; q < end; q++)
    if (*q == '@') at = q; /* the last '@': the host follows it */
  p->host = at != NULL ? at + 1 : auth;
  if (*p->host == '[') { /* an IPv6 address */
    p->host_end = memchr(p->host, ']', (size_t)(end - p->host));
    if (p->host_end == NULL) return "host";
    p->host++;
    q = p->host_end + 1;
  } else {
    for (q = p->host; q < end && *q != ':'; q++) {}
    p->host_end = q;
  }
  if (p->host_end == p->host) return "host";
  if (q < end) { /* ":port": 1 to 65535 */
    long port = 0;
    if (*q != ':' || q + 1 == end || end - q > 6) return "port";
    for (q++; q < end; q++) {
      if (*q < '0' || *q > '9') return "port";
      port = port * 10 + (*q - '0');
    }
    if (port < 1 || port > 65535) return "port";
  }
  p->path = end;
  return NULL;
}

/* Does the path end in "/v1" or "/v1/calls" (trailing '/' aside)? osvi
** adds /v1/calls itself: such a base_url would ask for /v1/v1/calls. */
static int names_the_endpoint(const char *path) {
  size_t n = strlen(path);
  while (n > 0 && path[n - 1] == '/') n--;
  return (n >= 3 && memcmp(path + n - 3, "/v1", 3) == 0) ||
         (n >= 9 && memcmp(path + n - 9, "/v1/calls", 9) == 0);
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

/* Pushes how to show a value that should have been a URL and is not even
** "scheme://...": not at all (a token given in the wrong place, from the
** wrong variable, must not be printed). */
static const char *push_unlike_url(lua_State *L, const char *u) {
  size_t scheme = strcspn(u, ":/@");
  if (strncmp(u + scheme, "://", 3) == 0 && scheme < 16) {
    lua_pushlstring(L, u, scheme + 3); /* "ftp://" */
    return lua_pushfstring(L, "'%s...'", lua_tostring(L, -1));
  }
  return lua_pushfstring(L, "%d bytes with no scheme (not shown)",
                         (int)strlen(u));
}

/* base_url: http:// or https://, a host (an empty one would leave libcurl
** to read the path as one: "http:///" asked for http://v1/calls), no
** query, no fragment, and not the endpoint itself. Messages show it with
** its password masked. */
static void check_base_url(lua_State *L, const char *u) {
  url_parts p;
  const char *why;
  if (strncmp(u, "https://", 8) != 0 && strncmp(u, "http://", 7) != 0)
    osvi_usage_error(L, "base_url",
                     "option 'base_url': expected an http:// "
                     "or https:// URL, got %s",
                     push_unlike_url(L, u));
  if (u[strcspn(u, " ?#")] != '\0')
    osvi_usage_error(L, "base_url",
                     "option 'base_url': expected a URL "
                     "without spaces, query or fragment, got '%s'",
                     push_masked(L, u));
  why = split_url(u, 0, &p);
  if (why != NULL && strcmp(why, "port") == 0)
    osvi_usage_error(L, "base_url",
                     "option 'base_url': expected a port from 1 to 65535 "
                     "after the host's ':', got '%s'",
                     push_masked(L, u));
  if (why != NULL)
    osvi_usage_error(L, "base_url",
                     "option 'base_url': expected a host after '%s', got "
                     "'%s'",
                     u[4] == 's' ? "https://" : "http://", push_masked(L, u));
  if (why == NULL && names_the_endpoint(p.path))
    osvi_usage_error(L, "base_url",
                     "option 'base_url': expected the API's root (such as "
                     "https://api.osvi.ai), without /v1 or /v1/calls, which "
                     "osvi adds itself; got '%s'",
                     push_masked(L, u));
}

/* proxy: "" (none), or a URL with a host, of a scheme libcurl can use as a
** proxy (none means http://). */
static void check_proxy(lua_State *L, const char *u) {
  static const char *const schemes[] = {
      "http", "https", "socks4", "socks4a", "socks5", "socks5h", NULL};
  url_parts p;
  int ok;
  if (*u == '\0') return;
  ok = u[strcspn(u, " ")] == '\0' && split_url(u, 1, &p) == NULL;
  if (ok && p.scheme > 0) {
    int i;
    for (i = 0; schemes[i] != NULL; i++)
      if (strlen(schemes[i]) == p.scheme &&
          strncasecmp(u, schemes[i], p.scheme) == 0)
        break;
    ok = schemes[i] != NULL;
  }
  if (!ok && strstr(u, "://") == NULL)
    osvi_usage_error(L, "proxy",
                     "option 'proxy': expected \"\" (no proxy) or a proxy "
                     "URL with a host (http://, https://, socks4://, "
                     "socks4a://, socks5:// or socks5h://), got %s",
                     push_unlike_url(L, u));
  if (!ok)
    osvi_usage_error(L, "proxy",
                     "option 'proxy': expected \"\" (no proxy) or a proxy "
                     "URL with a host (http://, https://, socks4://, "
                     "socks4a://, socks5:// or socks5h://), got '%s'",
                     push_masked(L, u));
}

/* The proxy libcurl would take from the environment for a URL of this
** scheme, as it reads it: <scheme>_proxy (and HTTPS_PROXY for https; never
** HTTP_PROXY, which a CGI request can set), then all_proxy and ALL_PROXY.
** Returns its value, and its name in *name, or NULL. HTTP_PROXY is
** reported too for http, so that the log can say it is not used. */
static const char *env_proxy(int https, const char **name) {
  static const char *const for_http[] = {"http_proxy", "HTTP_PROXY",
                                         "all_proxy", "ALL_PROXY", NULL};
  static const char *const for_https[] = {"https_proxy", "HTTPS_PROXY",
                                          "all_proxy", "ALL_PROXY", NULL};
  const char *const *v;
  for (v = https ? for_https : for_http; *v != NULL; v++) {
    const char *value = getenv(*v);
    if (value != NULL && *value != '\0') {
      *name = *v;
      return value;
    }
  }
  return NULL;
}

/*
** Which proxy the client's requests go through, and a line in the log
** that says so. The API token travels in a header:
**   - the proxy option: that proxy, whatever the scheme ("": none);
**   - https:// without it: libcurl's environment variables (and NO_PROXY);
**     through a proxy, the request goes inside a CONNECT tunnel, so the
**     token stays within TLS;
**   - http:// without it: no proxy at all. A proxy that only the
**     environment named would read the token in clear text.
** Sets o->proxy: NULL (the environment's) or a proxy ("" for none).
*/
static void choose_proxy(lua_State *L, int opts, const char *base, int log,
                         osvi_http_options *o) {
  int https = strncmp(base, "https://", 8) == 0;
  const char *name = NULL, *env, *proxy;
  proxy = opt_string(L, opts, "proxy", NULL, MAX_URL);
  if (proxy != NULL) check_proxy(L, proxy);
  env = env_proxy(https, &name);
  if (proxy != NULL) {
    o->proxy = proxy;
    if (log && *proxy != '\0')
      (void)fprintf(stderr, "osvi: proxy: %s (the proxy option)\n",
                    push_masked(L, proxy));
    else if (log && env != NULL)
      (void)fprintf(stderr,
                    "osvi: proxy: none (the proxy option is \"\"; %s in the "
                    "environment is not used)\n",
                    name);
  } else if (!https) {
    o->proxy = ""; /* not the environment's */
    if (log && env != NULL)
      (void)fprintf(stderr,
                    "osvi: proxy: none; %s=%s in the environment is ignored: "
                    "base_url is http://, and the API token would reach that "
                    "proxy in clear text (the proxy option names one to use "
                    "anyway)\n",
                    name, push_masked(L, env));
  } else {
    o->proxy = NULL; /* libcurl reads the environment, NO_PROXY included */
    if (log && env != NULL)
      (void)fprintf(stderr,
                    "osvi: proxy: %s from %s in the environment (a CONNECT "
                    "tunnel: the API token stays inside TLS%s)\n",
                    push_masked(L, env), name,
                    getenv("no_proxy") != NULL || getenv("NO_PROXY") != NULL
                        ? "; NO_PROXY may exempt the host"
                        : "");
  }
}

/* ------------------------------------------------------------------------
** Construction and lifetime
** --------------------------------------------------------------------- */

/* Closes the client: its cursors' next step raises a usage error. The
** handle is freed at once unless a transfer of it is being read (close()
** from a finaliser): then __gc frees it. Handles inherited across fork()
** are abandoned, never cleaned up (they hold the parent's connections).
** Safe twice. */
static void release(osvi_client *c) {
  if (c->pid == (long)getpid()) osvi_http_free(&c->http);
  memset(&c->http, 0, sizeof c->http);
  free(c->base_url);
  c->base_url = NULL;
}

static int client_close(lua_State *L) {
  osvi_client *c = luaL_checkudata(L, 1, OSVI_CLIENT_MT);
  c->closed = 1;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, 1); /* the idle pool: the collector's now */
  if (c->http.busy) return 0;
  release(c);
  return 0;
}

/* __gc: nothing can be using an unreachable client */
static int client_gc(lua_State *L) {
  osvi_client *c = luaL_checkudata(L, 1, OSVI_CLIENT_MT);
  c->closed = 1;
  release(c);
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
  c = lua_newuserdatauv(L, sizeof *c, 1); /* uservalue: the idle pool */
  memset(c, 0, sizeof *c);
  c->closed = 1;
  c->pid = (long)getpid();
  luaL_setmetatable(L, OSVI_CLIENT_MT);

  memset(&o, 0, sizeof o);
  token = opt_string(L, opts, "token", "OSVI_API_TOKEN", 1024);
  check_token(L, token);
  o.token = token;
  base = opt_string(L, opts, "base_url", "OSVI_BASE_URL", MAX_URL);
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
  ua = opt_string(L, opts, "user_agent", NULL, 1024);
  if (ua == NULL) {
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    ua = lua_pushfstring(L, "osvi-lua/%s libcurl/%s %s", OSVI_VERSION,
                         v->version, LUA_VERSION);
  }
  o.user_agent = ua;
  o.ca_file = opt_string(L, opts, "ca_file", NULL, MAX_URL);
  choose_proxy(L, opts, base, c->log, &o);

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

const char *osvi_client_renew(osvi_client *c) {
  osvi_http old;
  const char *err;
  if (c->pid == (long)getpid()) return NULL;
  /* a copy of the settings with a connection cache of its own, in place
  ** (libcurl keeps pointers to the struct); the old handle, its header
  ** list and buffer are left as they are: this process's copy of the
  ** parent's, never used or freed again */
  old = c->http;
  memset(&c->http, 0, sizeof c->http);
  err = osvi_http_dup(&c->http, &old);
  if (err != NULL) {
    osvi_http_free(&c->http);
    c->http = old;
    return err;
  }
  c->pid = (long)getpid();
  return NULL;
}

osvi_client *osvi_client_check(lua_State *L, int idx) {
  osvi_client *c = luaL_checkudata(L, idx, OSVI_CLIENT_MT);
  if (c->closed) osvi_usage_error(L, NULL, "the client is closed");
  if (c->http.busy)
    osvi_usage_error(L, NULL,
                     "the client is in the middle of a request (used again "
                     "from a finaliser?)");
  if (c->pid != (long)getpid()) {
    const char *err;
    lua_pushnil(L); /* the idle pool is the parent's */
    lua_setiuservalue(L, idx, 1);
    err = osvi_client_renew(c);
    if (err != NULL) luaL_error(L, "osvi: after fork(): %s", err);
  }
  return c;
}

void osvi_client_policy(osvi_client *c, osvi_core_policy *p) {
  uint64_t x = c->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  c->rng = x;
  p->prefetch = c->prefetch;
  p->max_retries = c->max_retries;
  p->retry_base = c->retry_base;
  p->seed = x;
}

osvi_pool *osvi_client_take_pool(lua_State *L, int cidx, int n) {
  osvi_client *c = osvi_client_check(L, cidx);
  cidx = lua_absindex(L, cidx);
  if (lua_getiuservalue(L, cidx, 1) == LUA_TUSERDATA) {
    osvi_pool *p = lua_touserdata(L, -1);
    lua_pushnil(L);
    lua_setiuservalue(L, cidx, 1); /* the cursor's now */
    if (osvi_pool_usable(p) && osvi_pool_size(p) == n) return p;
  }
  lua_pop(L, 1);
  return osvi_pool_new(L, &c->http, n);
}

void osvi_client_give_pool(lua_State *L, int cidx, int pidx) {
  osvi_client *c = luaL_testudata(L, cidx, OSVI_CLIENT_MT);
  osvi_pool *p = lua_touserdata(L, pidx);
  pidx = lua_absindex(L, pidx);
  osvi_pool_stop(p);
  if (c == NULL || c->closed || !osvi_pool_usable(p)) return;
  if (lua_getiuservalue(L, cidx, 1) == LUA_TNIL) {
    lua_pushvalue(L, pidx);
    lua_setiuservalue(L, cidx, 1); /* kept for the next cursor */
  }
  lua_pop(L, 1);
}

static int client_tostring(lua_State *L) {
  osvi_client *c = luaL_checkudata(L, 1, OSVI_CLIENT_MT);
  if (c->closed)
    lua_pushliteral(L, "osvi.Client (closed)");
  else /* the token is never shown, nor base_url's password */
    lua_pushfstring(L, "osvi.Client (%p, %s)", (void *)c,
                    push_masked(L, c->base_url));
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
** Lua functions
** --------------------------------------------------------------------- */

/* One request through a core of its own, with the client at cidx and the
** filters at fidx: page | nil, err. `count` asks for one call and gives
** meta.total_count. */
static int one_page_run(lua_State *L) {
  osvi_client *c = lua_touserdata(L, 1);
  int count = lua_toboolean(L, 3);
  osvi_core_policy p;
  osvi_link link;
  int core;
  osvi_client_policy(c, &p);
  /* the base URL as a Lua string on this stack: a finaliser that closes
  ** the client meanwhile frees the client's copy */
  link.base_url = lua_pushstring(L, c->base_url);
  link.log = c->log;
  osvi_core_new(L, 2, OSVI_CORE_ONE, &p);
  if (count) osvi_core_one_page(osvi_core_check(L, -1), 0, 1);
  core = lua_gettop(L);
  if (osvi_easy_run(L, core, &c->http, &c->closed, &link) != OSVI_CORE_PAGE) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  if (count) {
    lua_getfield(L, -1, "meta");
    lua_getfield(L, -1, "total_count");
  }
  return 1;
}

/* Runs one_page_run in protected mode, so that an error (out of memory)
** never leaves the client's handle marked busy. */
static int one_page(lua_State *L, int cidx, int fidx, int count) {
  osvi_client *c = osvi_client_check(L, cidx);
  int base = lua_gettop(L), status;
  lua_pushcfunction(L, one_page_run);
  lua_pushvalue(L, cidx);
  if (fidx > base)
    lua_pushnil(L);
  else
    lua_pushvalue(L, fidx);
  lua_pushboolean(L, count);
  status = lua_pcall(L, 3, LUA_MULTRET, 0);
  c->http.busy = 0;
  if (status != LUA_OK) return lua_error(L);
  return lua_gettop(L) - base;
}

static int client_page(lua_State *L) { return one_page(L, 1, 2, 0); }

static int count_with(lua_State *L, int cidx, int fidx) {
  return one_page(L, cidx, fidx, 1);
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
  return one_page(L, 2, 1, 0);
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
      {"__gc", client_gc},
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
