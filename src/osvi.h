/*
** osvi — Lua client for the OSVI "List calls" API.
** Internal header shared by the files in src/. Only luaopen_osvi is exported.
*/
#ifndef OSVI_H
#define OSVI_H

#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "lua.h"
#include "lauxlib.h"
#include "compat.h" /* Lua 5.3, 5.1 and LuaJIT: what they lack of 5.4 */

#if defined(__GNUC__)
#pragma GCC visibility push(hidden)
#endif

#define OSVI_VERSION "0.1.0"

#define OSVI_CLIENT_MT "osvi.Client"
#define OSVI_CURSOR_MT "osvi.Cursor"
#define OSVI_ERROR_MT "osvi.Error"

/* ------------------------------------------------------------------------
** Errors (error.c)
** An error is a table {kind, status, message, errors, retry_after, ...} with
** the metatable OSVI_ERROR_MT, whose __tostring gives a readable line.
** --------------------------------------------------------------------- */

#define OSVI_ERROR_KINDS(X)                                       \
  X(USAGE, "usage")               /* bad filter or option */      \
  X(AUTH, "auth")                 /* 401 */                       \
  X(FORBIDDEN, "forbidden")       /* 403 */                       \
  X(NOT_FOUND, "not_found")       /* 404 */                       \
  X(VALIDATION, "validation")     /* 422 */                       \
  X(RATE_LIMITED, "rate_limited") /* 429 */                       \
  X(SERVER, "server")             /* 5xx */                       \
  X(HTTP, "http")                 /* any other non-2xx */         \
  X(NETWORK, "network")           /* no usable response */        \
  X(TIMEOUT, "timeout")           /* timeout, connect or stall */ \
  X(DECODE, "decode")             /* not JSON, or bad shape */    \
  X(API, "api")                   /* 200 with success:false */    \
  X(TOO_LARGE, "too_large")       /* body over the cap */

typedef enum {
#define OSVI_KIND_ENUM(name, str) OSVI_E_##name,
  OSVI_ERROR_KINDS(OSVI_KIND_ENUM) /* OSVI_E_USAGE, ... */
#undef OSVI_KIND_ENUM
  OSVI_E_COUNT
} osvi_kind;

/* Pushes a new error object: [-0, +1]. status <= 0 means "no response". */
void osvi_error_push(lua_State *L, osvi_kind kind, long status, const char *fmt,
                     ...);
/* Pushes a usage error naming `key` and raises it. Does not return. */
int osvi_usage_error(lua_State *L, const char *key, const char *fmt, ...);
/* Raises a usage error whose key is the value at index `key` (exact, even
** with embedded zeros). Does not return. */
int osvi_usage_error_at(lua_State *L, int key, const char *fmt, ...);
/* Sets field `name` of the error object at the top of the stack to the value
** at the top, popping it: [-1, +0]. */
void osvi_error_set(lua_State *L, const char *name);
int osvi_error_open(lua_State *L);

/* ------------------------------------------------------------------------
** Time (time.c): ISO-8601 parsing and IST formatting, no Lua state needed.
** --------------------------------------------------------------------- */

#define OSVI_IST_OFFSET 19800 /* +05:30, in seconds */

/* Parses a date (YYYY-MM-DD, midnight IST) or a timestamp with an offset.
** Sets *lo_ms and *hi_ms to the first and last millisecond the text covers
** (a whole IST day for a date, one instant otherwise). Returns 0 on success,
** or a static message saying what is wrong. */
const char *osvi_time_parse(const char *s, size_t len, int64_t *lo_ms,
                            int64_t *hi_ms);
/* Writes "YYYY-MM-DDThh:mm:ss+05:30" for epoch seconds `t` into out[26].
** Returns 0, or -1 when t is out of the years 0001..9999. */
int osvi_time_format_ist(int64_t t, char out[32]);
int osvi_time_open(lua_State *L);

/* ------------------------------------------------------------------------
** Filters and the query string (query.c)
** --------------------------------------------------------------------- */

typedef enum { OSVI_QUERY_PAGE, OSVI_QUERY_ITERATE } osvi_query_mode;

typedef struct osvi_filters {
  lua_Integer page;     /* 0 when not given */
  lua_Integer per_page; /* 0 when not given */
  lua_Integer limit;    /* -1 when not given */
} osvi_filters;

/* Checks the filter table at `idx` (nil means no filters) and pushes the
** encoded query without page and per_page ("" when empty): [-0, +1].
** Raises a usage error naming the key on any bad filter. */
void osvi_query_check(lua_State *L, int idx, osvi_query_mode mode,
                      osvi_filters *out);
/* Pushes base .. "&page=P&per_page=N" with the parts that are non-zero,
** without a leading '&': [-0, +1]. */
void osvi_query_push_full(lua_State *L, const char *base, lua_Integer page,
                          lua_Integer per_page);
int osvi_query_open(lua_State *L);

/* ------------------------------------------------------------------------
** HTTP (http.c): knows libcurl, not Lua.
** --------------------------------------------------------------------- */

typedef struct osvi_http {
  CURL *easy;
  struct curl_slist *headers;
  char *body; /* response body, malloc'd, reused across requests */
  size_t len, cap;
  size_t max_bytes;  /* the body cap (max_response_bytes) */
  int too_large;     /* set by the write callback when the cap is hit */
  int out_of_memory; /* set by the write callback when realloc fails */
  long retry_after;  /* seconds from Retry-After, -1 when absent/garbage */
  int sent;          /* requests sent since osvi_http_budget */
  int budget;        /* requests allowed; libcurl's own re-sends count */
  int over_budget;   /* a request was stopped because the budget is spent */
  char errbuf[CURL_ERROR_SIZE];
} osvi_http;

typedef struct osvi_http_options {
  const char *token;
  const char *user_agent;
  const char *ca_file; /* NULL: the system's CA store */
  const char *proxy;   /* NULL: libcurl's environment variables */
  long timeout_ms, connect_timeout_ms;
  long stall_s; /* under 64 bytes/s for this long is a timeout */
  size_t max_bytes;
} osvi_http_options;

/* Creates the easy handle. Returns NULL, or a static message on failure
** (the struct is then still safe to pass to osvi_http_free). */
const char *osvi_http_init(osvi_http *h, const osvi_http_options *o);
/* Makes h a copy of the configured `from` (which must outlive it: the
** header list is shared). Returns NULL or a static message. */
const char *osvi_http_dup(osvi_http *h, const osvi_http *from);
/* Prepares h for a transfer (clears the last result; url NULL keeps the
** last URL); curl_easy_perform or the multi interface then runs it. */
CURLcode osvi_http_prepare(osvi_http *h, const char *url);
/* Allows `n` requests to be sent from now on, counting each one libcurl
** sends, including its silent re-send on a reused connection found dead. */
void osvi_http_budget(osvi_http *h, int n);
/* Seconds to wait from a Retry-After value (delta-seconds or an HTTP date;
** a date in the past is 0), or -1 when it is neither. */
long osvi_http_retry_after(const char *v, size_t len);
/* Performs one GET. *status is the HTTP status or 0 when none arrived. */
CURLcode osvi_http_get(osvi_http *h, const char *url, long *status);
/* Safe on a zeroed struct and safe twice. */
void osvi_http_free(osvi_http *h);
void osvi_http_global_init(void);

/* ------------------------------------------------------------------------
** Decoding and normalising a response (decode.c)
** --------------------------------------------------------------------- */

double osvi_now(void); /* monotonic seconds */

/* Turns a response into a page {data = {...}, meta = {...}} (returns 1) or
** an error object (returns 0); either is pushed: [-0, +1]. */
int osvi_decode_response(lua_State *L, long status, const char *body,
                         size_t len, long retry_after);
int osvi_decode_open(lua_State *L);

/* ------------------------------------------------------------------------
** Client (client.c) and cursor (cursor.c)
** --------------------------------------------------------------------- */

#define OSVI_MAX_PREFETCH 16
#define OSVI_DEFAULT_PREFETCH 4

typedef struct osvi_client {
  osvi_http http; /* the sequential handle: page() and prefetch = 0 */
  char *base_url; /* malloc'd, without a trailing '/' */
  int max_retries;
  int prefetch; /* pages requested ahead while iterating */
  int log;      /* a line on stderr per request */
  double retry_base;
  uint64_t rng; /* xorshift state for backoff jitter */
  int closed;
} osvi_client;

osvi_client *osvi_client_check(lua_State *L, int idx);
/* Pushes the default client, creating it from the environment on first
** use: [-0, +1]. */
void osvi_client_push_default(lua_State *L);
/* Fetches one page with retries. Pushes the page (returns 1) or an error
** object (returns 0): [-0, +1]. */
int osvi_client_fetch(lua_State *L, osvi_client *c, const char *query);
/* Pushes the URL for a query: [-0, +1]. */
void osvi_client_url(lua_State *L, osvi_client *c, const char *query);
/* After attempt `attempt` of a page ended with (rc, status) on h: returns 1
** and sets *delay (seconds) when another attempt should be made. */
int osvi_client_retry(osvi_client *c, const osvi_http *h, CURLcode rc,
                      long status, int attempt, double *delay);
/* Pushes the page, or the error object (with `attempts`), for the final
** attempt on h: [-0, +1]. Returns 1 for a page. */
int osvi_client_result(lua_State *L, const osvi_http *h, CURLcode rc,
                       long status, int attempt, double elapsed);
/* One line on stderr for a finished attempt, when the client logs. */
void osvi_client_log(const osvi_client *c, const osvi_http *h, CURLcode rc,
                     long status, int attempt);
/* Pushes the client's prefetch pool (creating it, or a private one when
** the client's is in use) and marks it in use: [-0, +1]. */
struct osvi_pool *osvi_client_pool(lua_State *L, int cidx);
int osvi_client_open(lua_State *L);

/* ------------------------------------------------------------------------
** Prefetching (prefetch.c): the next pages requested while the caller
** works through the current one, with libcurl's multi interface.
** --------------------------------------------------------------------- */

typedef struct osvi_pool osvi_pool;

/* Pushes a new pool of n transfers for the client at cidx: [-0, +1]. */
osvi_pool *osvi_pool_new(lua_State *L, int cidx, int n);
/* Stops every transfer in flight and frees the pool for the next user. */
void osvi_pool_release(osvi_pool *p);
int osvi_pool_busy(const osvi_pool *p);
/* Pushes page `page` (returns 1) or its error object (returns 0), having
** asked for pages up to `last` (0: only this one) to be on their way:
** [-0, +1]. `query` is the frozen query without page and per_page. Without
** `wait`, returns -1 with nothing pushed when the page is not in yet. */
int osvi_pool_step(lua_State *L, osvi_pool *p, const char *query,
                   lua_Integer page, lua_Integer per_page, lua_Integer last,
                   int wait);
/* Asks for the pages after the last one asked for, up to `last`, as far as
** the pool allows: [-0, +0]. */
void osvi_pool_fill(lua_State *L, osvi_pool *p, const char *query,
                    lua_Integer per_page, lua_Integer last);
/* Moves the transfers on without waiting (sends, receives, retries). */
void osvi_pool_pump(osvi_pool *p);
int osvi_pool_open(lua_State *L);

/* client:calls(filters) with the client at `cidx`, filters at `fidx`:
** returns cursor, nil, nil, cursor. */
int osvi_cursor_new(lua_State *L, int cidx, int fidx);
int osvi_cursor_open(lua_State *L);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
