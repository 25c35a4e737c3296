/*
** libFuzzer harness for osvi.new's option checks (src/client.c, with the
** URL masking of src/http.c): the counterpart of fuzz_query.c for options.
**
** The input is a small program in fuzz_query.c's format (see
** corpus/options/README):
**   byte 0      the environment: bit 0 OSVI_API_TOKEN set (to a valid
**               token), bit 1 OSVI_BASE_URL set (to the string of the next
**               byte, from the dictionary), bit 2 http_proxy, bit 3
**               https_proxy, bit 4 NO_PROXY (all with credentials);
**               bits 5-7: 0-5 a table, 6 nil, 7 a value that is not a table
**   then ops    [key byte] [value-type byte] [operands...], until the input
**               runs out (at most MAX_OPS): t[key] = value
** Keys are mostly the option names, sometimes near misses, odd strings or
** non-string keys; values are strings (a dictionary of good and almost
** good tokens, URLs, proxies, user agents and paths, mutated, or raw input
** bytes, control characters included), numbers at and around every
** option's bounds, any double, booleans, nil, or tables.
**
** osvi.new runs under lua_pcall. It must either return a client whose
** every option is within what README promises (each string option free of
** control characters, base_url http(s):// with a host and not the
** endpoint, every number within its range) and whose tostring shows
** neither the token nor base_url's password, or raise a usage error object
** naming the key, whose message shows neither; anything else aborts.
** `log` is never true here (the log would write to stderr).
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

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
LUALIB_API int luaopen_osvi(lua_State *L);

#define GC_EVERY 256 /* full collection every N inputs */
#define MAX_OPS 24   /* assignments per input */
#define MAX_STR 64   /* length of a raw string value */

static lua_State *L;
static unsigned long runs;
static int verbose;

#define TOKEN "osvi-test-token1"

/* ------------------------------------------------------------------------
** Vocabulary
** --------------------------------------------------------------------- */

/* The options and what each accepts: 's' a string, 'n' a number from lo
** to hi, 'i' an integer from lo to hi, 'b' a boolean. */
static const struct {
  const char *name;
  char type;
  double lo, hi;
} options[] = {
    {"token", 's', 0, 0},
    {"base_url", 's', 0, 0},
    {"timeout", 'n', 0.001, 86400},
    {"connect_timeout", 'n', 0.001, 86400},
    {"max_retries", 'i', 0, 10},
    {"retry_base", 'n', 0, 60},
    {"max_response_bytes", 'i', 1024, 1099511627776.0},
    {"user_agent", 's', 0, 0},
    {"ca_file", 's', 0, 0},
    {"proxy", 's', 0, 0},
    {"stall_timeout", 'n', 1, 86400},
    {"prefetch", 'i', 0, 16},
    {"log", 'b', 0, 0},
};
#define NOPTIONS (sizeof(options) / sizeof(options[0]))

/* clang-format off */
#define LS(lit) {lit, sizeof(lit) - 1}

/* keys that are not options: near misses, case, padding, NUL, long */
static const lstr wrong_keys[] = {
    LS("timout"), LS("Token"), LS("proxy "), LS(""), LS("base-url"),
    LS("x\0y"), LS("max_response_bytes_and_then_some_more_than_32")};
#define NWRONG (sizeof(wrong_keys) / sizeof(wrong_keys[0]))

static const lstr dict[] = {
    /* tokens */
    LS(TOKEN), LS("0123456789abcdef"), LS("short"), LS("0123456789abcdef0"),
    LS("0123456789 abcde"), LS("0123456789abcd\r\n"), LS("!#$%&'()*+,-./:~"),
    /* base URLs */
    LS("https://api.osvi.ai"), LS("http://127.0.0.1:9"), LS("http://"),
    LS("http:///"), LS("http:////"), LS("http://:80"), LS("http://@/"),
    LS("https://"), LS("http://alice:s3cr3t-pw@127.0.0.1:9"),
    LS("http://s3cr3t-pw@h/"), LS("http://alice:s3cr3t-pw@"),
    LS("https://api.osvi.ai/v1"), LS("https://api.osvi.ai/v1/calls/"),
    LS("https://gw.example/osvi/"), LS("http://[::1]:8080"), LS("http://[::1"),
    LS("http://h:0"), LS("http://h:65535"), LS("http://h:65536"), LS("http://h:"),
    LS("http://h/?q=1"), LS("http://h/#f"), LS("ftp://alice:s3cr3t-pw@h"),
    LS("HTTP://h"), LS("http://h\r\nX-Injected: yes"),
    /* proxies */
    LS(""), LS("http://bob:pr0xy-pw@127.0.0.1:3128"), LS("127.0.0.1:3128"),
    LS("socks5h://bob:pr0xy-pw@h:1080"), LS("socks4a://h"), LS("gopher://h"),
    LS("bob:pr0xy-pw@:3128"), LS("HTTPS://h:443"), LS("http://h x:1"),
    /* user agents and files */
    LS("report/1.0"), LS("ua\r\nAPI-Token: attacker-token-01"), LS("ua\0x"),
    LS("ua\tx"), LS("ua\x7f"), LS("/etc/ssl/certs/ca-certificates.crt"),
    LS("/tmp/x\ny")};
#define NDICT (sizeof(dict) / sizeof(dict[0]))

static const double number_edges[] = {
    0.0, -0.0, 0.001, 0.0009, 1, 0.999, 2, 10, 11, 15, 16, 17, 60, 60.5,
    86400, 86400.5, 86401, 1023, 1024, 1024.5, 1099511627776.0,
    1099511627777.0, -1, 1e300, 0.5, 30};
#define NNUMBER (sizeof(number_edges) / sizeof(number_edges[0]))

static const lua_Integer int_edges[] = {
    0, 1, -1, 10, 11, 16, 17, 1023, 1024, 86400, 86401,
    (lua_Integer)1 << 40, ((lua_Integer)1 << 40) + 1, LUA_MAXINTEGER,
    LUA_MININTEGER};
#define NINT (sizeof(int_edges) / sizeof(int_edges[0]))
/* clang-format on */

/* ------------------------------------------------------------------------
** Reading the program
** --------------------------------------------------------------------- */

/* Pushes a string value (fuzz_program.h). */
static void push_string(reader *r, unsigned how) {
  push_dict_string(L, r, how, dict, NDICT, MAX_STR);
}

static void push_value(reader *r) {
  unsigned t = get(r);
  switch (t % 10) {
    case 0:
    case 1:
    case 2: push_string(r, t / 10); break;
    case 3: lua_pushnumber(L, number_edges[get(r) % NNUMBER]); break;
    case 4: lua_pushinteger(L, int_edges[get(r) % NINT]); break;
    case 5: lua_pushinteger(L, (lua_Integer)get64(r)); break;
    case 6: {
      uint64_t bits = get64(r);
      double x;
      memcpy(&x, &bits, sizeof x); /* any double: NaN, inf, subnormals */
      lua_pushnumber(L, x);
      break;
    }
    case 7: lua_createtable(L, 0, 0); break;
    case 8: lua_pushboolean(L, (int)(t & 16)); break;
    default: lua_pushnil(L);
  }
}

/* Pushes one key (never nil, never NaN): 0-25 the options (twice), 26-32
** near misses, 33-38 the integer 1, 39 true. */
static void push_key(reader *r) {
  unsigned k = get(r) % 40;
  if (k < 2 * NOPTIONS) {
    lua_pushstring(L, options[k % NOPTIONS].name);
  } else if (k < 2 * NOPTIONS + NWRONG) {
    const lstr *w = &wrong_keys[k - 2 * NOPTIONS];
    lua_pushlstring(L, w->s, w->len);
  } else if (k < 39) {
    lua_pushinteger(L, 1);
  } else {
    lua_pushboolean(L, 1);
  }
}

/* ------------------------------------------------------------------------
** Checks
** --------------------------------------------------------------------- */

static struct {
  int have_table, env_token, env_base;
  size_t size;
} cur;

#define FAIL(...)                                          \
  do {                                                     \
    fprintf(stderr, "fuzz_options: invariant violated: "); \
    fprintf(stderr, __VA_ARGS__);                          \
    fprintf(stderr, " (%zu-byte input)\n", cur.size);      \
    abort();                                               \
  } while (0)

static int tostring_cb(lua_State *LL) {
  luaL_tolstring(LL, 1, NULL);
  return 1;
}

/* tostring of the value at idx, which must not raise: pushed. */
static const char *to_text(int idx) {
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, tostring_cb);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) FAIL("tostring raised");
  return lua_tostring(L, -1);
}

/* The value of option `name` as given: the table's, else the environment's
** (token, base_url). Pushed (nil when none). */
static void given(int ft, const char *name) {
  if (cur.have_table) {
    lua_getfield(L, ft, name);
    if (!lua_isnil(L, -1)) return;
    lua_pop(L, 1);
  }
  if (strcmp(name, "token") == 0 && cur.env_token)
    lua_pushstring(L, getenv("OSVI_API_TOKEN"));
  else if (strcmp(name, "base_url") == 0 && cur.env_base)
    lua_pushstring(L, getenv("OSVI_BASE_URL"));
  else
    lua_pushnil(L);
}

/* Does hay (hlen bytes) contain needle (nlen bytes, at least 1)? */
static int contains(const char *hay, size_t hlen, const char *needle,
                    size_t nlen) {
  size_t i;
  for (i = 0; nlen > 0 && i + nlen <= hlen; i++)
    if (memcmp(hay + i, needle, nlen) == 0) return 1;
  return 0;
}

/* Do the bytes (s, n) occur in any string key or value of the options
** (or in OSVI_BASE_URL, for a password), other than in the value of
** `except`? Then finding them in a message proves nothing. For the token,
** OSVI_BASE_URL does not count: it comes from the dictionary, where only
** the token itself holds the token, and a token in OSVI_BASE_URL (the two
** variables swapped) must not be shown either. */
static int elsewhere(int ft, const char *s, size_t n, const char *except) {
  int found = 0;
  if (n == 0) return 0;
  if (cur.env_base && strcmp(except, "token") != 0 &&
      strcmp(except, "base_url") != 0 &&
      contains(getenv("OSVI_BASE_URL"), strlen(getenv("OSVI_BASE_URL")), s, n))
    return 1;
  if (!cur.have_table) return 0;
  lua_pushnil(L);
  while (!found && lua_next(L, ft)) {
    size_t kl, vl;
    const char *k =
        lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kl) : NULL;
    const char *v =
        lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vl) : NULL;
    if (k != NULL && contains(k, kl, s, n)) found = 1;
    if (v != NULL && !(k != NULL && strcmp(k, except) == 0) &&
        contains(v, vl, s, n))
      found = 1;
    lua_pop(L, 1);
  }
  if (found) lua_pop(L, 1);
  return found;
}

/* The password of URL u ("scheme://user:PASS@host"): sets *pw, *n and
** returns 1, or returns 0 when there is none. */
static int password_of(const char *u, const char **pw, size_t *n) {
  const char *auth = strstr(u, "://"), *end, *at = NULL, *colon, *p;
  auth = auth ? auth + 3 : u;
  end = auth + strcspn(auth, "/?#");
  for (p = auth; p < end; p++)
    if (*p == '@') at = p;
  colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
  if (colon == NULL) return 0;
  *pw = colon + 1;
  *n = (size_t)(at - colon - 1);
  return 1;
}

static int plain(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
         (c >= 'A' && c <= 'Z') || c == '.' || c == '_' || c == '~' || c == '-';
}

/* Where a text shows the values it was given: after the last "got " of a
** usage error, after the address in tostring(client). What comes before
** is osvi's own words. */
static const char *value_part(const char *t) {
  const char *p = t, *got = NULL;
  while ((p = strstr(p, "got ")) != NULL) got = p++;
  if (got != NULL) return got + 4;
  if (strncmp(t, "osvi.Client (", 13) == 0 && strstr(t, ", ") != NULL)
    return strstr(t, ", ") + 2;
  return t;
}

/* Does `part` show a piece of the secret (s, n) -- a run of at least 5
** letters, digits and "._~-" with a letter and a digit in it, which none of
** the words around a value ("byte 0x0D at position 3", "bytes with no
** scheme") is -- that is not also in the options elsewhere (`except` is
** the option the secret is in; `outside` is that option's value, in which
** the run must not also appear outside the secret)? */
static int shows_piece(int ft, const char *part, const char *s, size_t n,
                       const char *except, const char *outside) {
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    int letter = 0, digit = 0;
    while (j < n && plain((unsigned char)s[j])) {
      if (s[j] >= '0' && s[j] <= '9')
        digit = 1;
      else if (s[j] != '.' && s[j] != '_' && s[j] != '~' && s[j] != '-')
        letter = 1;
      j++;
    }
    if (j - i >= 5 && letter && digit &&
        contains(part, strlen(part), s + i, j - i) &&
        !elsewhere(ft, s + i, j - i, except)) {
      /* in the option's own value outside the secret (a user or a host
      ** with the same letters) it may be shown */
      int twice = 0;
      if (outside != NULL) {
        const char *first = s, *o;
        size_t ol = strlen(outside);
        for (o = outside; o + (j - i) <= outside + ol; o++)
          if (memcmp(o, s + i, j - i) == 0 && !(o >= first && o < first + n))
            twice = 1;
      }
      if (!twice) return 1;
    }
    i = j + 1;
  }
  return 0;
}

/* The text at idx must show no piece of the token or of a password of the
** options. */
static void check_secrets(int ft, int text, const char *what) {
  static const char *const urls[] = {"base_url", "proxy", NULL};
  const char *t = lua_tostring(L, text), *part = value_part(t);
  int i;
  given(ft, "token");
  if (lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *tok = lua_tolstring(L, -1, &n);
    if (shows_piece(ft, part, tok, n, "token", NULL))
      FAIL("%s shows the token: %s", what, t);
  }
  lua_pop(L, 1);
  for (i = 0; urls[i] != NULL; i++) {
    given(ft, urls[i]);
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *u = lua_tostring(L, -1), *pw;
      size_t n;
      if (password_of(u, &pw, &n) && shows_piece(ft, part, pw, n, urls[i], u))
        FAIL("%s shows the password of %s: %s", what, urls[i], t);
    }
    lua_pop(L, 1);
  }
}

static int has_control(const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 1;
  return 0;
}

/* The host of a URL accepted as base_url or proxy: present. */
static void check_url(const char *name, const char *u, int need_scheme) {
  const char *auth = strstr(u, "://"), *end, *host, *p;
  if (need_scheme && strncmp(u, "http://", 7) != 0 &&
      strncmp(u, "https://", 8) != 0)
    FAIL("%s '%s' accepted without http:// or https://", name, u);
  /* a scheme is what comes before the first "://", if it has no '/',
  ** '@' or ':' (else the whole is an authority and a path) */
  auth = auth != NULL && strcspn(u, "/@:") == (size_t)(auth - u) ? auth + 3 : u;
  end = auth + strcspn(auth, "/");
  host = auth;
  for (p = auth; p < end; p++)
    if (*p == '@') host = p + 1;
  if (host == end || *host == ':' || (host[0] == '[' && host[1] == ']'))
    FAIL("%s '%s' accepted without a host", name, u);
}

/* A client was made from the options at ft: every option within bounds. */
static void check_client(int ft, int client) {
  size_t i;
  const char *t;
  if (!luaL_testudata(L, client, OSVI_CLIENT_MT))
    FAIL("osvi.new returned a %s", luaL_typename(L, client));
  for (i = 0; i < NOPTIONS; i++) {
    given(ft, options[i].name);
    if (!lua_isnil(L, -1)) {
      switch (options[i].type) {
        case 's': {
          size_t n;
          const char *s;
          if (lua_type(L, -1) != LUA_TSTRING)
            FAIL("%s accepted as a %s", options[i].name, luaL_typename(L, -1));
          s = lua_tolstring(L, -1, &n);
          if (has_control(s, n))
            FAIL("%s accepted with a control character", options[i].name);
          if (strcmp(options[i].name, "token") == 0) {
            size_t k;
            if (n != 16) FAIL("a token of %zu bytes accepted", n);
            for (k = 0; k < n; k++)
              if (s[k] < 0x21 || s[k] > 0x7e)
                FAIL("token byte %zu accepted", k);
          } else if (strcmp(options[i].name, "base_url") == 0) {
            size_t m = strlen(s);
            check_url("base_url", s, 1);
            while (m > 0 && s[m - 1] == '/') m--;
            if ((m >= 3 && memcmp(s + m - 3, "/v1", 3) == 0) ||
                (m >= 9 && memcmp(s + m - 9, "/v1/calls", 9) == 0))
              FAIL("base_url '%s' names the endpoint", s);
            if (strpbrk(s, " ?#") != NULL)
              FAIL("base_url '%s' accepted with a space, query or fragment", s);
            if (n > 4096) FAIL("base_url of %zu bytes", n);
          } else if (strcmp(options[i].name, "proxy") == 0 && n > 0) {
            check_url("proxy", s, 0);
          }
          break;
        }
        case 'n':
        case 'i': {
          double x;
          if (lua_type(L, -1) != LUA_TNUMBER)
            FAIL("%s accepted as a %s", options[i].name, luaL_typename(L, -1));
          x = lua_tonumber(L, -1);
          if (!(x >= options[i].lo && x <= options[i].hi))
            FAIL("%s = %.17g accepted", options[i].name, x);
          if (options[i].type == 'i' && x != floor(x))
            FAIL("%s = %.17g accepted as an integer", options[i].name, x);
          break;
        }
        default:
          if (lua_type(L, -1) != LUA_TBOOLEAN)
            FAIL("log accepted as a %s", luaL_typename(L, -1));
      }
    } else if (strcmp(options[i].name, "token") == 0) {
      FAIL("a client without a token");
    }
    lua_pop(L, 1);
  }
  t = to_text(client);
  if (strncmp(t, "osvi.Client (", 13) != 0) FAIL("tostring(client) is '%s'", t);
  check_secrets(ft, lua_gettop(L), "tostring(client)");
  lua_pop(L, 1);
  /* closed now rather than by the collector */
  lua_getfield(L, client, "close");
  lua_pushvalue(L, client);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) FAIL("client:close() raised");
}

/* The usage error at e for the options at ft. */
static void check_error(int ft, int e) {
  size_t len;
  const char *t;
  if (!lua_istable(L, e)) {
    const char *m = lua_type(L, e) == LUA_TSTRING ? lua_tostring(L, e) : "";
    FAIL("raised a %s, not an error object: %s", luaL_typename(L, e), m);
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
  if (lua_getfield(L, e, "where") != LUA_TNIL)
    FAIL("a usage error raised with no Lua caller has a position");
  lua_pop(L, 1);

  /* key: an option that was given (or missing: the token), or a key of the
  ** table that is not an option; absent only when the options are not a
  ** table or have a key that is not a name */
  switch (lua_getfield(L, e, "key")) {
    case LUA_TSTRING: {
      const char *k = lua_tostring(L, -1);
      if (strcmp(k, "token") == 0) break;
      if (strcmp(k, "base_url") == 0 && cur.env_base) break;
      if (!cur.have_table) FAIL("error.key '%s' without a table", k);
      lua_pushvalue(L, -1);
      if (lua_rawget(L, ft) == LUA_TNIL)
        FAIL("error.key '%s' is not a key of the options", k);
      lua_pop(L, 1);
      break;
    }
    case LUA_TNIL: break;
    default: FAIL("error.key is a %s", luaL_typename(L, -1));
  }
  lua_pop(L, 1);

  t = to_text(e);
  if (strncmp(t, "osvi: usage: ", 13) != 0) FAIL("tostring(err) is '%s'", t);
  check_secrets(ft, lua_gettop(L), "the usage error");
  lua_pop(L, 1);
}

/* ------------------------------------------------------------------------
** libFuzzer entry points
** --------------------------------------------------------------------- */

/* Loads osvi (and so lua-cjson) in protected mode: returns osvi.new, which
** the inputs then call from C, with no Lua function on the stack. */
static int init_cb(lua_State *LL) {
  luaL_requiref(LL, "osvi", luaopen_osvi, 0);
  lua_getfield(LL, -1, "new");
  return 1;
}

static void set_env(int on, const char *name, const char *value) {
  if (on)
    setenv(name, value, 1);
  else
    unsetenv(name);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  verbose = getenv("OSVI_FUZZ_VERBOSE") != NULL;
  unsetenv("OSVI_LOG");
  unsetenv("all_proxy");
  unsetenv("ALL_PROXY");
  unsetenv("HTTPS_PROXY");
  unsetenv("HTTP_PROXY");
  L = luaL_newstate();
  if (L == NULL) abort();
  luaL_openlibs(L);
  /* Debian's lua-cjson for 5.4 first, whatever LUA_CPATH says */
  if (luaL_dostring(L,
                    "package.cpath = '/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;'"
                    " .. package.cpath") != LUA_OK) {
    fprintf(stderr, "fuzz_options: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_pushcfunction(L, init_cb);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "fuzz_options: init: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_options.new");
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
  container = (h >> 5) & 7;
  cur.env_token = h & 1;
  cur.env_base = (h >> 1) & 1;
  set_env(cur.env_token, "OSVI_API_TOKEN", TOKEN);
  if (cur.env_base) {
    const lstr *d = &dict[get(&r) % NDICT];
    char buf[64];
    /* an environment variable stops at a zero byte */
    (void)snprintf(buf, sizeof buf, "%.*s", (int)d->len, d->s);
    cur.env_base = buf[0] != '\0';
    set_env(cur.env_base, "OSVI_BASE_URL", buf);
  } else {
    unsetenv("OSVI_BASE_URL");
  }
  set_env((h >> 2) & 1, "http_proxy", "http://bob:pr0xy-pw@127.0.0.1:3128");
  set_env((h >> 3) & 1, "https_proxy", "http://bob:pr0xy-pw@127.0.0.1:3128");
  set_env((h >> 4) & 1, "NO_PROXY", "127.0.0.1,api.osvi.ai");

  lua_settop(L, 0);
  if (container <= 5) {
    cur.have_table = 1;
    lua_newtable(L);
    for (ops = 0; ops < MAX_OPS && r.n > 0; ops++) {
      push_key(&r);
      push_value(&r);
      lua_rawset(L, 1);
    }
    lua_getfield(L, 1, "log");
    if (lua_toboolean(L, -1)) { /* no log on stderr while fuzzing */
      lua_pushboolean(L, 0);
      lua_setfield(L, 1, "log");
    }
    lua_pop(L, 1);
  } else if (container == 6) {
    lua_pushnil(L);
  } else {
    push_value(&r);
    cur.have_table = lua_istable(L, 1);
  }
  ft = 1;

  lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_options.new");
  lua_pushvalue(L, ft);
  status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_OK) {
    check_client(ft, 2);
    if (verbose) fprintf(stderr, "client\n");
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
