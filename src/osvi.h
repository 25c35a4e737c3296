/*
** osvi — Lua client for the OSVI "List calls" API.
** Internal header shared by the files in src/. Only luaopen_osvi is exported.
*/
#ifndef OSVI_H
#define OSVI_H

#include <stddef.h>
#include <stdint.h>

#include "curl_check.h" /* <curl/curl.h>, or which package has it */

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
  X(TOO_LARGE, "too_large")       /* body over the cap */         \
  X(INCONSISTENT, "inconsistent") /* a listing paging cannot follow */

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
/* Sets attempts and elapsed on the error object at the top, and says them
** in its message when there was more than one attempt: [-0, +0] */
void osvi_error_attempts(lua_State *L, int attempts, double elapsed);
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
/* The name of the NULL-terminated list closest to (s, len), for "did you
** mean": within an edit distance of 2, else NULL. */
const char *osvi_query_closest(const char *s, size_t len,
                               const char *const *names);
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
  int busy;          /* a transfer runs, or its result is not read yet */
  /* what the header callback saw of the response being received */
  size_t header_bytes;       /* all header lines so far */
  curl_off_t content_length; /* of this response, -1 before one is seen */
  int headers_complete;      /* the blank line after the headers came */
  int bad_response;          /* OSVI_HTTP_*: the transfer was stopped */
  char errbuf[CURL_ERROR_SIZE];
} osvi_http;

/* What made the header callback stop a transfer (bad_response). */
enum {
  OSVI_HTTP_GOOD,
  OSVI_HTTP_HEADERS_TOO_LARGE, /* over OSVI_MAX_HEADER_BYTES in all */
  OSVI_HTTP_TWO_LENGTHS        /* Content-Length headers that disagree */
};
#define OSVI_MAX_HEADER_BYTES 262144 /* 256 KiB */

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
/* Makes h a copy of the configured `from`, with a header list of its own:
** h owns everything it points to, and `from` may go first. Returns NULL or
** a static message (h is then still safe to pass to osvi_http_free). */
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
/* Copies the C string `in` into out[cap] with the userinfo of every URL in
** it ("scheme://user:password@host") masked, for messages from libcurl that
** may quote a URL: the password becomes "***", and a user alone (no ':')
** too; also without a scheme ("user:password@host:3128"). With one_url,
** `in` is one URL (a space does not end it). Returns the length of the
** whole result, as snprintf does (out may be NULL when cap is 0). */
size_t osvi_http_mask(char *out, size_t cap, const char *in, int one_url);
void osvi_http_global_init(void);

/* ------------------------------------------------------------------------
** Decoding and normalising a response (decode.c)
** --------------------------------------------------------------------- */

double osvi_now(void); /* monotonic seconds (time.c) */

/* Turns a response into a page {data = {...}, meta = {...}} (returns 1) or
** an error object (returns 0); either is pushed: [-0, +1]. */
int osvi_decode_response(lua_State *L, long status, const char *body,
                         size_t len, long retry_after);
/* Words the error object at the top for the query it answered (a 404 means
** an agent_uuid not on the account only when one was asked for): [-0, +0] */
void osvi_decode_explain(lua_State *L, const char *query);
int osvi_decode_open(lua_State *L);

/* ------------------------------------------------------------------------
** The paging core (core.c): what to request, which failures to retry and
** when, and how answers become calls, exactly once and in order. No I/O:
** a transport asks it for requests, performs them however it likes, and
** feeds back what came. It holds no C resources (a plain userdata), so it
** needs no finaliser and is never half-freed.
** --------------------------------------------------------------------- */

#define OSVI_CORE_MT "osvi.Core"
#define OSVI_MAX_PREFETCH 16
#define OSVI_DEFAULT_PREFETCH 4
/* requests a core may have at once: the pages ahead, the head, a re-read */
#define OSVI_CORE_SLOTS (OSVI_MAX_PREFETCH + 2)

typedef struct osvi_core osvi_core;

typedef enum {
  OSVI_CORE_LIST, /* a listing: pages in order, each call once */
  OSVI_CORE_ONE   /* one page as asked (page(), count()) */
} osvi_core_mode;

typedef struct osvi_core_policy {
  int prefetch; /* pages requested ahead of the one being read (LIST) */
  int max_retries;
  double retry_base; /* seconds; the backoff doubles from there */
  uint64_t seed;     /* for the backoff's jitter */
} osvi_core_policy;

/* What next_page found. */
enum {
  OSVI_CORE_PAGE, /* a page is pushed */
  OSVI_CORE_WAIT, /* nothing pushed: send requests, feed answers, wait */
  OSVI_CORE_DONE, /* nothing pushed: the listing is over */
  OSVI_CORE_ERROR /* an error object is pushed */
};

/* A request the transport is to send now. */
typedef struct osvi_core_request {
  unsigned id; /* echoed back with its answer */
  lua_Integer page;
  int attempt; /* 1 for the first request of a page, 2 for its retry... */
  int budget;  /* requests the transport may send for it, re-sends included */
} osvi_core_request;

/* Checks the filters at fidx and pushes a new core: [-0, +1]. Raises a
** usage error naming the key on a bad filter. */
osvi_core *osvi_core_new(lua_State *L, int fidx, osvi_core_mode mode,
                         const osvi_core_policy *policy);
osvi_core *osvi_core_check(lua_State *L, int idx);
/* A core of mode ONE asks for this page and per_page (0: not sent). */
void osvi_core_one_page(osvi_core *c, lua_Integer page, lua_Integer per_page);
/* The next request due at `now`: fills *out, pushes its query string and
** returns 1, or returns 0 with nothing pushed. The request is then in
** flight until answered, failed or lost. */
int osvi_core_next_request(lua_State *L, int core, double now,
                           osvi_core_request *out);
/* The answer to request `id`: the body is the string at `body` (a Lua
** string, so that nothing the transport owns is read after Lua runs).
** `sends` is how many requests the transport sent for it. An answer to a
** request the core no longer waits for is ignored. [-0, +0] */
void osvi_core_answer(lua_State *L, int core, unsigned id, long status,
                      long retry_after, int body, int sends, double now);
/* Request `id` got no answer: the error object at the top (popped) says
** why; `retryable` whether another attempt may help. [-1, +0] */
void osvi_core_failed(lua_State *L, int core, unsigned id, int retryable,
                      int sends, double now);
/* Every request in flight will never be answered (a transport that was
** closed, or a process that forked): they are asked for again. */
void osvi_core_lost(osvi_core *c);
/* Seconds until a retry is due (0: a request can be sent now), or -1 when
** nothing is waiting to be sent. */
double osvi_core_timeout(const osvi_core *c, double now);
int osvi_core_in_flight(const osvi_core *c);
/* Whether next_page would find something without any I/O (a page, an
** error, the end, or a decision to make): a host should not wait. */
int osvi_core_ready(const osvi_core *c);
/* The next page of new calls, or WAIT, DONE or an error (see above). */
int osvi_core_next_page(lua_State *L, int core, double now);
/* Pushes {requests, rereads, resyncs, repeats, ...}: [-0, +1] */
void osvi_core_push_stats(lua_State *L, const osvi_core *c);
/* The meta of the last page handed out (or nil): [-0, +1] */
void osvi_core_push_meta(lua_State *L, int core);
int osvi_core_open(lua_State *L); /* osvi.core: the Lua binding */

/* ------------------------------------------------------------------------
** Transports (transport.c): move the core's requests over libcurl, easy
** (one at a time, blocking) or multi (a pool of transfers, never blocking
** unless asked to wait). They call the core; the core calls none of them.
** --------------------------------------------------------------------- */

typedef struct osvi_pool osvi_pool;

typedef struct osvi_link {
  const char *base_url; /* without a trailing '/' */
  int log;              /* a line on stderr per attempt */
} osvi_link;

/* Runs the core at `core` over the easy handle h until next_page has
** something: returns what osvi_core_next_page returned (never WAIT), with
** what it pushed. `closed` is checked before each transfer: a client closed
** by Lua code that ran meanwhile (a finaliser) ends the run with a usage
** error. */
int osvi_easy_run(lua_State *L, int core, osvi_http *h, const int *closed,
                  const osvi_link *link);
/* Pushes a new pool of n transfers configured like `from`: [-0, +1] */
osvi_pool *osvi_pool_new(lua_State *L, const osvi_http *from, int n);
/* Whether the pool can be used in this process (not finalised, not
** inherited across fork()). */
int osvi_pool_usable(const osvi_pool *p);
int osvi_pool_size(const osvi_pool *p);
/* Whether the collector has finalised the pool (a finaliser brought back
** the cursor that held it). */
int osvi_pool_finalised(const osvi_pool *p);
/* The descriptor a host's loop can wait on: readable when a transfer can
** move on (an epoll descriptor of libcurl's sockets), or -1 (no epoll). */
int osvi_pool_fd(const osvi_pool *p);
int osvi_pool_running(const osvi_pool *p); /* transfers under way */
/* Seconds until libcurl wants to run its timeouts, or -1. */
double osvi_pool_timeout(const osvi_pool *p, double now);
/* Stops every transfer: what was in flight is forgotten. */
void osvi_pool_stop(osvi_pool *p);
/* Like osvi_easy_run over the pool; without `wait`, returns WAIT when
** nothing is in yet instead of waiting for it. */
int osvi_pool_run(lua_State *L, int core, osvi_pool *p, const osvi_link *link,
                  int wait);
/* Sends what the core has to send and takes in what arrived, without
** waiting and without handing out a page. */
void osvi_pool_pump(lua_State *L, int core, osvi_pool *p,
                    const osvi_link *link);
int osvi_pool_open(lua_State *L);

/* ------------------------------------------------------------------------
** Client (client.c) and cursor (cursor.c)
** --------------------------------------------------------------------- */

typedef struct osvi_client {
  osvi_http http; /* the sequential handle: page(), count(), prefetch = 0 */
  char *base_url; /* malloc'd, without a trailing '/' */
  int max_retries;
  int prefetch; /* pages requested ahead while iterating */
  int log;      /* a line on stderr per request */
  double retry_base;
  uint64_t rng; /* seeds each core's backoff jitter */
  long pid;     /* the process that made (or last renewed) the handles */
  int closed;
} osvi_client;

osvi_client *osvi_client_check(lua_State *L, int idx);
/* Makes the client's handles its own process's after a fork(): the
** inherited ones are abandoned, never used or cleaned up (that would touch
** the parent's connections). Returns NULL or a static message. */
const char *osvi_client_renew(osvi_client *c);
/* The core policy of the client: prefetch, retries, a fresh seed. */
void osvi_client_policy(osvi_client *c, osvi_core_policy *p);
/* Pushes the default client, creating it from the environment on first
** use: [-0, +1]. */
void osvi_client_push_default(lua_State *L);
/* Takes the client's idle prefetch pool (or makes one of n transfers):
** the caller owns it until osvi_client_give_pool. [-0, +1] */
osvi_pool *osvi_client_take_pool(lua_State *L, int cidx, int n);
/* Gives the pool at pidx back to the client at cidx for the next cursor
** (or leaves it to the collector when the client has one or is closed). */
void osvi_client_give_pool(lua_State *L, int cidx, int pidx);
int osvi_client_open(lua_State *L);

/* client:calls(filters) with the client at `cidx`, filters at `fidx`:
** returns cursor, nil, nil, cursor. */
int osvi_cursor_new(lua_State *L, int cidx, int fidx);
int osvi_cursor_open(lua_State *L);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#endif
