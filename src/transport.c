/*
** Transports: they move the core's requests over libcurl and feed back what
** came, and nothing more. Paging, retries and decoding are the core's.
**
**   easy  one request at a time on the client's handle, blocking; retry
**         delays are slept (page(), count(), a cursor with prefetch = 0)
**   pool  a multi handle and its own easy handles, a userdata owned by one
**         cursor at a time (or kept idle by the client between cursors);
**         never waits unless asked to (prefetch, poll())
**
** Everything a transfer touches belongs to the transfer's owner: each easy
** handle has its own header list (http.c), and a pool holds no pointer to
** its client. No Lua runs while libcurl does; what a transfer left behind is
** read into locals and the body copied into a Lua string before any Lua
** code (a finaliser) can run and reuse the handle.
*/
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__)
#define OSVI_HAVE_EPOLL 1
#include <sys/epoll.h>
#endif

#include "osvi.h"

#define OSVI_POOL_MT "osvi.Pool"

/* ------------------------------------------------------------------------
** One finished attempt, as plain data
** --------------------------------------------------------------------- */

typedef struct outcome {
  CURLcode rc;
  long status, retry_after;
  int sent, too_large, over_budget, out_of_memory;
  int bad_response; /* OSVI_HTTP_*, or OSVI_HTTP_HEADER_LINE below */
  int no_fds;       /* errno when no descriptor could be made, else 0 */
  size_t max_bytes;
  char detail[CURL_ERROR_SIZE]; /* libcurl's words, URL userinfo masked */
} outcome;

/* libcurl's refusal of one header line over its limit (100 KB) */
#define OSVI_HTTP_HEADER_LINE (-1)

/* When a transfer failed before any answer: was it for want of a file
** descriptor? libcurl says only "Couldn't connect" (or "Out of memory"),
** so try to make one: errno EMFILE or ENFILE, or 0. */
static int out_of_descriptors(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), e = errno;
  if (fd >= 0) {
    (void)close(fd);
    return 0;
  }
  return e == EMFILE || e == ENFILE ? e : 0;
}

static void take_outcome(outcome *o, const osvi_http *h, CURLcode rc,
                         long status) {
  o->rc = rc;
  o->status = status;
  o->retry_after = h->retry_after;
  o->sent = h->sent;
  o->too_large = h->too_large;
  o->over_budget = h->over_budget;
  o->out_of_memory = h->out_of_memory;
  o->bad_response = h->bad_response;
  o->no_fds = 0;
  o->max_bytes = h->max_bytes;
  /* libcurl refuses a header line over 100 KB as "out of memory" (7.x;
  ** CURLE_TOO_LARGE from 8.6): not ours, and before the headers ended */
  if (o->bad_response == OSVI_HTTP_GOOD && !o->out_of_memory &&
      !h->headers_complete &&
      (rc == CURLE_OUT_OF_MEMORY
#if LIBCURL_VERSION_NUM >= 0x080600
       || rc == CURLE_TOO_LARGE
#endif
       ))
    o->bad_response = OSVI_HTTP_HEADER_LINE;
  if (rc != CURLE_OK && rc != CURLE_OPERATION_TIMEDOUT && status == 0 &&
      o->bad_response == OSVI_HTTP_GOOD)
    o->no_fds = out_of_descriptors();
  /* libcurl may quote the URL or the proxy it was given: never with the
  ** password */
  osvi_http_mask(o->detail, sizeof o->detail,
                 h->errbuf[0] ? h->errbuf : curl_easy_strerror(rc), 0);
}

/* Connection failures and timeouts are worth another try; DNS and TLS
** failures are not: they will not fix themselves in a second. Nor is a
** response that cannot be read, nor a process out of descriptors. */
static int retryable_curl(const outcome *o) {
  if (o->too_large || o->over_budget || o->out_of_memory ||
      o->bad_response != OSVI_HTTP_GOOD || o->no_fds)
    return 0;
  switch (o->rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT: return 1;
    default: return 0;
  }
}

/* Pushes the error object for a transfer that did not complete. */
static void push_transfer_error(lua_State *L, const outcome *o) {
  if (o->too_large || o->rc == CURLE_FILESIZE_EXCEEDED) {
    osvi_error_push(L, OSVI_E_TOO_LARGE, o->status,
                    "the response is larger than max_response_bytes (%I)",
                    (LUAI_UACINT)o->max_bytes);
  } else if (o->over_budget) {
    osvi_error_push(L, OSVI_E_NETWORK, o->status,
                    "the connection closed before an answer, and the "
                    "retries are spent (1 + max_retries requests sent)");
  } else if (o->out_of_memory) {
    osvi_error_push(L, OSVI_E_NETWORK, o->status,
                    "not enough memory for the response");
  } else if (o->bad_response == OSVI_HTTP_HEADER_LINE) {
    osvi_error_push(L, OSVI_E_NETWORK, o->status,
                    "a response header is too large (libcurl refuses a "
                    "header line over 100 KB)");
  } else if (o->bad_response == OSVI_HTTP_HEADERS_TOO_LARGE) {
    osvi_error_push(L, OSVI_E_NETWORK, o->status,
                    "the response headers are too large (over %d KiB in "
                    "all)",
                    OSVI_MAX_HEADER_BYTES / 1024);
  } else if (o->bad_response == OSVI_HTTP_TWO_LENGTHS) {
    osvi_error_push(L, OSVI_E_NETWORK, o->status,
                    "a protocol error: the response has two different "
                    "Content-Length headers (where it ends is unknown, so "
                    "it is not read)");
  } else if (o->rc == CURLE_BAD_CONTENT_ENCODING) {
    /* an answer came, but in a form this client cannot read */
    osvi_error_push(L, OSVI_E_DECODE, o->status,
                    "the response body cannot be decoded (its "
                    "Content-Encoding is unknown or broken): %s",
                    o->detail);
  } else if (o->no_fds) {
    osvi_error_push(L, OSVI_E_NETWORK, o->status,
                    "no file descriptors left to open a connection (%s)",
                    strerror(o->no_fds));
  } else if (o->rc == CURLE_OPERATION_TIMEDOUT) {
    osvi_error_push(L, OSVI_E_TIMEOUT, o->status, "%s", o->detail);
  } else {
    osvi_error_push(L, OSVI_E_NETWORK, o->status, "%s", o->detail);
  }
  lua_pushinteger(L, (lua_Integer)o->rc);
  osvi_error_set(L, "curl_code");
}

/* Feeds the result of request `id` to the core; the body (when the
** transfer completed) is at `body`. */
static void feed(lua_State *L, int core, unsigned id, const outcome *o,
                 int body) {
  if (o->rc == CURLE_OK) {
    osvi_core_answer(L, core, id, o->status, o->retry_after, body, o->sent,
                     osvi_now());
  } else {
    push_transfer_error(L, o);
    osvi_core_failed(L, core, id, retryable_curl(o), o->sent, osvi_now());
  }
}

/* A few words on why an attempt failed, for the log. */
static const char *failure_words(const outcome *o) {
  if (o->too_large || o->rc == CURLE_FILESIZE_EXCEEDED)
    return "over max_response_bytes";
  if (o->over_budget) return "retries spent";
  if (o->bad_response == OSVI_HTTP_HEADER_LINE ||
      o->bad_response == OSVI_HTTP_HEADERS_TOO_LARGE)
    return "response headers too large";
  if (o->bad_response == OSVI_HTTP_TWO_LENGTHS)
    return "Content-Length headers disagree";
  if (o->no_fds) return "no file descriptors left";
  return curl_easy_strerror(o->rc);
}

/* One line on stderr for a finished attempt, when logging. */
static void log_attempt(const osvi_link *link, const osvi_http *h,
                        const outcome *o, int attempt) {
  char *url = NULL;
  double secs = 0;
  const char *path;
  if (!link->log) return;
  curl_easy_getinfo(h->easy, CURLINFO_EFFECTIVE_URL, &url);
  curl_easy_getinfo(h->easy, CURLINFO_TOTAL_TIME, &secs);
  /* the path and query only: no scheme, host or credentials; the token is
  ** a header and never appears here */
  path = url != NULL ? strstr(url, "/v1/calls") : NULL;
  if (o->rc == CURLE_OK)
    (void)fprintf(stderr,
                  "osvi: GET %s -> %ld, attempt %d, %lu bytes, %.1f ms\n",
                  path ? path : "/v1/calls", o->status, attempt,
                  (unsigned long)h->len, secs * 1000);
  else
    (void)fprintf(stderr, "osvi: GET %s -> failed (%s), attempt %d, %.1f ms\n",
                  path ? path : "/v1/calls", failure_words(o), attempt,
                  secs * 1000);
}

/* Pushes the URL of the query at the top (replacing it): [-1, +1] */
static void push_url(lua_State *L, const osvi_link *link) {
  const char *q = lua_tostring(L, -1);
  lua_pushfstring(L, "%s/v1/calls%s%s", link->base_url, *q ? "?" : "", q);
  lua_remove(L, -2);
}

static void sleep_seconds(double s) {
  struct timespec ts;
  if (s <= 0) return;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* ------------------------------------------------------------------------
** Easy: one at a time
** --------------------------------------------------------------------- */

int osvi_easy_run(lua_State *L, int core, osvi_http *h, const int *closed,
                  const osvi_link *link) {
  osvi_core *c = osvi_core_check(L, core);
  core = lua_absindex(L, core);
  for (;;) {
    osvi_core_request r;
    int res = osvi_core_next_page(L, core, osvi_now());
    if (res != OSVI_CORE_WAIT) return res;
    if (osvi_core_next_request(L, core, osvi_now(), &r)) {
      outcome o;
      long status;
      CURLcode rc;
      push_url(L, link);
      if (*closed || h->easy == NULL) { /* closed by a finaliser meanwhile */
        lua_pop(L, 1);
        osvi_core_lost(c);
        osvi_error_push(L, OSVI_E_USAGE, 0, "the client is closed");
        return OSVI_CORE_ERROR;
      }
      h->busy = 1;
      osvi_http_budget(h, r.budget);
      rc = osvi_http_get(h, lua_tostring(L, -1), &status);
      take_outcome(&o, h, rc, status);
      log_attempt(link, h, &o, r.attempt);
      lua_pop(L, 1);
      /* the body is copied before anything else can run */
      lua_pushlstring(L, rc == CURLE_OK && h->body ? h->body : "",
                      rc == CURLE_OK ? h->len : 0);
      h->busy = 0;
      feed(L, core, r.id, &o, -1);
      lua_pop(L, 1);
    } else {
      double t = osvi_core_timeout(c, osvi_now());
      if (t < 0) { /* nothing to send and nothing to wait for */
        osvi_error_push(L, OSVI_E_USAGE, 0,
                        "the listing has nothing left to ask for");
        return OSVI_CORE_ERROR;
      }
      sleep_seconds(t);
    }
  }
}

/* ------------------------------------------------------------------------
** Pool: a multi handle and its transfers
** --------------------------------------------------------------------- */

typedef struct transfer {
  osvi_http http; /* first member: CURLINFO_PRIVATE points here */
  unsigned id;    /* the core's request (0: idle) */
  int attempt;
} transfer;

/*
** libcurl tells the pool which sockets to watch and when its next timeout
** is (CURLMOPT_SOCKETFUNCTION, CURLMOPT_TIMERFUNCTION); the pool keeps the
** sockets in an epoll descriptor. So one descriptor, readable when any
** transfer can move on, and one deadline say everything a host's event loop
** needs to wait (cur:pollfd(), cur:timeout()); the pool itself waits the
** same way when it is asked to. Without epoll (not Linux), the pool waits
** with curl_multi_poll and has no descriptor to give.
*/
struct osvi_pool {
  CURLM *multi;
  long pid; /* the process that made it */
  int n;
  int running;
  int epfd;         /* the sockets libcurl watches; -1 without epoll */
  double timer_due; /* when libcurl wants its timeout run; < 0: never */
  transfer t[OSVI_CORE_SLOTS];
};

#if defined(OSVI_HAVE_EPOLL)
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp,
                     void *socketp) {
  osvi_pool *p = userp;
  struct epoll_event ev;
  (void)easy, (void)socketp;
  if (what == CURL_POLL_REMOVE) {
    (void)epoll_ctl(p->epfd, EPOLL_CTL_DEL, s, NULL);
    return 0;
  }
  memset(&ev, 0, sizeof ev);
  ev.data.fd = s;
  ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0u) |
              ((what & CURL_POLL_OUT) ? EPOLLOUT : 0u);
  if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT)
    (void)epoll_ctl(p->epfd, EPOLL_CTL_ADD, s, &ev);
  return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp) {
  osvi_pool *p = userp;
  (void)multi;
  p->timer_due = timeout_ms < 0 ? -1 : osvi_now() + (double)timeout_ms / 1e3;
  return 0;
}
#endif

/* Closes the pool's own descriptor (also in a process that inherited it:
** that closes only this process's copy, and leaves the parent's epoll set
** alone). */
static void close_epoll(osvi_pool *p) {
  if (p->epfd >= 0) (void)close(p->epfd);
  p->epfd = -1;
}

static int pool_gc(lua_State *L) {
  osvi_pool *p = luaL_checkudata(L, 1, OSVI_POOL_MT);
  int i;
  close_epoll(p);
  if (p->pid != (long)getpid()) {
    /* inherited across fork(): the handles and their connections are the
    ** parent's; they are abandoned, never cleaned up here */
    p->multi = NULL;
    p->n = 0;
    return 0;
  }
  osvi_pool_stop(p);
  for (i = 0; i < p->n; i++) osvi_http_free(&p->t[i].http);
  if (p->multi != NULL) curl_multi_cleanup(p->multi);
  p->multi = NULL;
  p->n = 0;
  return 0;
}

osvi_pool *osvi_pool_new(lua_State *L, const osvi_http *from, int n) {
  osvi_pool *p = lua_newuserdatauv(L, sizeof *p, 0);
  int i;
  memset(p, 0, sizeof *p); /* empty and consistent before acquiring */
  p->pid = (long)getpid();
  p->epfd = -1;
  p->timer_due = -1;
  luaL_setmetatable(L, OSVI_POOL_MT);
  if (n > OSVI_CORE_SLOTS) n = OSVI_CORE_SLOTS;
  p->multi = curl_multi_init();
  if (p->multi == NULL)
    luaL_error(L, "libcurl could not create a multi handle");
#if defined(OSVI_HAVE_EPOLL)
  p->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (p->epfd < 0) {
    int e = errno;
    /* an error object like a transfer's: a process out of descriptors is
    ** said as such, and the caller can tell it from a bug */
    osvi_error_push(L, OSVI_E_NETWORK, 0,
                    "%s the transfers' epoll descriptor (%s)",
                    e == EMFILE || e == ENFILE ? "no file descriptors left for"
                                               : "cannot make",
                    strerror(e));
    lua_error(L);
  }
  if (curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, on_socket) !=
          CURLM_OK ||
      curl_multi_setopt(p->multi, CURLMOPT_SOCKETDATA, p) != CURLM_OK ||
      curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, on_timer) !=
          CURLM_OK ||
      curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p) != CURLM_OK)
    luaL_error(L, "libcurl refused the multi handle's callbacks");
#endif
  for (i = 0; i < n; i++) {
    const char *err = osvi_http_dup(&p->t[i].http, from);
    p->n = i + 1; /* so that __gc frees what exists */
    if (err != NULL) luaL_error(L, "%s", err);
  }
  return p;
}

int osvi_pool_usable(const osvi_pool *p) {
  return p->multi != NULL && p->pid == (long)getpid();
}

int osvi_pool_size(const osvi_pool *p) { return p->n; }

int osvi_pool_finalised(const osvi_pool *p) {
  return p->multi == NULL && p->pid == (long)getpid();
}

int osvi_pool_running(const osvi_pool *p) { return p->running; }

int osvi_pool_fd(const osvi_pool *p) {
  return osvi_pool_usable(p) ? p->epfd : -1;
}

double osvi_pool_timeout(const osvi_pool *p, double now) {
  if (!osvi_pool_usable(p) || p->timer_due < 0) return -1;
  return p->timer_due > now ? p->timer_due - now : 0;
}

void osvi_pool_stop(osvi_pool *p) {
  int i;
  if (p->multi == NULL) return;
  for (i = 0; i < p->n; i++) {
    transfer *t = &p->t[i];
    if (t->id != 0) curl_multi_remove_handle(p->multi, t->http.easy);
    t->id = 0;
    t->http.busy = 0;
  }
  p->running = 0;
}

/* Lets libcurl move every transfer on that can, without waiting: the
** sockets epoll says are ready, and libcurl's timeout when it is due. */
static void perform(osvi_pool *p) {
  int still;
#if defined(OSVI_HAVE_EPOLL)
  struct epoll_event ev[32];
  int i, n = epoll_wait(p->epfd, ev, 32, 0);
  for (i = 0; i < n; i++) {
    int flags = ((ev[i].events & EPOLLIN) ? CURL_CSELECT_IN : 0) |
                ((ev[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                ((ev[i].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);
    curl_multi_socket_action(p->multi, ev[i].data.fd, flags, &still);
  }
  if (p->timer_due >= 0 && p->timer_due <= osvi_now()) {
    p->timer_due = -1;
    curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &still);
  }
#else
  curl_multi_perform(p->multi, &still);
#endif
}

/* Waits up to `seconds` for a socket or libcurl's deadline. */
static void wait_for(osvi_pool *p, double seconds) {
  double t = osvi_pool_timeout(p, osvi_now());
  if (t >= 0 && t < seconds) seconds = t;
#if defined(OSVI_HAVE_EPOLL)
  {
    struct epoll_event ev;
    (void)epoll_wait(p->epfd, &ev, 1, (int)(seconds * 1000) + (seconds > 0));
  }
#else
  curl_multi_poll(p->multi, NULL, 0, (int)(seconds * 1000) + 1, NULL);
#endif
}

/* Starts what the core has to send, as far as there are idle transfers. */
static void submit(lua_State *L, int core, osvi_pool *p,
                   const osvi_link *link) {
  int i;
  for (i = 0; i < p->n; i++) {
    transfer *t = &p->t[i];
    osvi_core_request r;
    if (t->id != 0) continue;
    if (!osvi_core_next_request(L, core, osvi_now(), &r)) return;
    push_url(L, link);
    osvi_http_budget(&t->http, r.budget);
    if (osvi_http_prepare(&t->http, lua_tostring(L, -1)) != CURLE_OK ||
        curl_multi_add_handle(p->multi, t->http.easy) != CURLM_OK) {
      lua_pop(L, 1);
      osvi_error_push(L, OSVI_E_NETWORK, 0,
                      "libcurl could not start a transfer");
      osvi_core_failed(L, core, r.id, 0, 1, osvi_now());
      continue;
    }
    lua_pop(L, 1);
    t->id = r.id;
    t->attempt = r.attempt;
    t->http.busy = 1;
    p->running++;
  }
}

/* Feeds the core the transfers that finished; returns how many. */
static int collect(lua_State *L, int core, osvi_pool *p,
                   const osvi_link *link) {
  CURLMsg *m;
  int left, done = 0;
  while (p->multi != NULL &&
         (m = curl_multi_info_read(p->multi, &left)) != NULL) {
    transfer *t = NULL;
    outcome o;
    long status = 0;
    unsigned id;
    CURLcode rc;
    if (m->msg != CURLMSG_DONE) continue;
    rc = m->data.result;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
    if (t == NULL || t->id == 0) continue;
    curl_easy_getinfo(t->http.easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(p->multi, t->http.easy);
    take_outcome(&o, &t->http, rc, status);
    log_attempt(link, &t->http, &o, t->attempt);
    id = t->id;
    lua_pushlstring(L, rc == CURLE_OK && t->http.body ? t->http.body : "",
                    rc == CURLE_OK ? t->http.len : 0);
    t->id = 0;
    t->http.busy = 0;
    p->running--;
    feed(L, core, id, &o, -1);
    lua_pop(L, 1);
    done++;
  }
  return done;
}

/* submit, perform, collect: returns how many answers were fed. */
static int step(lua_State *L, int core, osvi_pool *p, const osvi_link *link) {
  int done;
  submit(L, core, p, link);
  perform(p);
  done = collect(L, core, p, link);
  if (done > 0) { /* the next ones on their way */
    submit(L, core, p, link);
    perform(p);
  }
  return done;
}

void osvi_pool_pump(lua_State *L, int core, osvi_pool *p,
                    const osvi_link *link) {
  if (!osvi_pool_usable(p)) return;
  step(L, lua_absindex(L, core), p, link);
}

int osvi_pool_run(lua_State *L, int core, osvi_pool *p, const osvi_link *link,
                  int wait) {
  osvi_core *c = osvi_core_check(L, core);
  core = lua_absindex(L, core);
  for (;;) {
    double t;
    int res = osvi_core_next_page(L, core, osvi_now());
    if (res == OSVI_CORE_PAGE && osvi_pool_usable(p)) {
      /* the pages after it on their way now, while the caller works */
      submit(L, core, p, link);
      perform(p);
    }
    if (res != OSVI_CORE_WAIT) return res;
    if (!osvi_pool_usable(p)) {
      osvi_error_push(L, OSVI_E_USAGE, 0, "the cursor's transfers are gone");
      return OSVI_CORE_ERROR;
    }
    if (step(L, core, p, link) > 0) continue;
    if (!wait) return OSVI_CORE_WAIT;
    t = osvi_core_timeout(c, osvi_now());
    if (t < 0 && p->running == 0) {
      osvi_error_push(L, OSVI_E_USAGE, 0,
                      "the listing has nothing left to ask for");
      return OSVI_CORE_ERROR;
    }
    /* wait for a socket, libcurl's deadline, or a retry that is due (one
    ** that has no idle transfer yet waits for a transfer to finish) */
    if (t < 0 || t > 1 || (t == 0 && p->running >= p->n)) t = 1;
    wait_for(p, t);
  }
}

int osvi_pool_open(lua_State *L) {
  if (luaL_newmetatable(L, OSVI_POOL_MT)) {
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  return 0;
}
