/*
** Prefetching: while the caller works through page k, pages k+1..k+n are
** already on their way, through libcurl's multi interface. Pages are still
** handed out strictly in order, each with the same retries as a single
** request, and no more than the pool's size are ever requested ahead.
**
** A pool is a userdata (so the garbage collector owns its handles) with one
** multi handle and n easy handles copied from the client's. The client keeps
** one pool for its cursors; a second cursor iterating at the same time gets
** a private one. Only this file calls curl_multi_*; like http.c, it raises
** no Lua error while a transfer is running: Lua work (decoding, errors)
** happens after a transfer has finished.
*/
#include <string.h>
#include <time.h>

#include "osvi.h"

#define OSVI_POOL_MT "osvi.Pool"

enum { SLOT_IDLE, SLOT_RUNNING, SLOT_WAITING, SLOT_DONE };

typedef struct slot {
  osvi_http http;
  lua_Integer page; /* the page this slot is for (0: none) */
  int state;
  int attempt; /* attempts made for the page */
  double due;  /* SLOT_WAITING: when to try again (monotonic seconds) */
  CURLcode rc; /* SLOT_DONE: how the last attempt ended */
  long status;
  double started; /* when the page was first asked for */
} slot;

struct osvi_pool {
  CURLM *multi;
  osvi_client *client;
  int n;            /* slots */
  int allowed;      /* requests in flight allowed now; a 429 halves it */
  int busy;         /* held by a cursor */
  lua_Integer next; /* the next page not yet asked for */
  slot slots[OSVI_MAX_PREFETCH + 1];
};

double osvi_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define now osvi_now

/* ------------------------------------------------------------------------
** Lifetime
** --------------------------------------------------------------------- */

static void stop(osvi_pool *p, slot *s) {
  if (s->state == SLOT_RUNNING)
    curl_multi_remove_handle(p->multi, s->http.easy);
  s->state = SLOT_IDLE;
  s->page = 0;
}

void osvi_pool_release(osvi_pool *p) {
  int i;
  for (i = 0; i < p->n; i++) stop(p, &p->slots[i]);
  p->busy = 0;
  p->next = 0;
  p->allowed = p->n;
}

int osvi_pool_busy(const osvi_pool *p) { return p->busy; }

static int pool_gc(lua_State *L) {
  osvi_pool *p = luaL_checkudata(L, 1, OSVI_POOL_MT);
  int i;
  if (p->multi != NULL) osvi_pool_release(p);
  for (i = 0; i < p->n; i++) osvi_http_free(&p->slots[i].http);
  if (p->multi != NULL) curl_multi_cleanup(p->multi);
  p->multi = NULL;
  p->n = 0;
  return 0;
}

/* The pool keeps a pointer to its client: the client owns the pool or a
** cursor holding the pool holds the client, and __gc does not use it. */
osvi_pool *osvi_pool_new(lua_State *L, int cidx, int n) {
  osvi_client *c = osvi_client_check(L, cidx);
  osvi_pool *p = lua_newuserdatauv(L, sizeof *p, 0);
  int i;
  memset(p, 0, sizeof *p); /* empty and consistent before acquiring */
  luaL_setmetatable(L, OSVI_POOL_MT);
  p->multi = curl_multi_init();
  if (p->multi == NULL)
    luaL_error(L, "libcurl could not create a multi handle");
  for (i = 0; i < n; i++) {
    const char *err = osvi_http_dup(&p->slots[i].http, &c->http);
    p->n = i + 1; /* so that __gc frees what exists */
    if (err != NULL) luaL_error(L, "%s", err);
  }
  p->allowed = n;
  p->client = c;
  return p;
}

/* ------------------------------------------------------------------------
** Transfers
** --------------------------------------------------------------------- */

static slot *find(osvi_pool *p, lua_Integer page) {
  int i;
  for (i = 0; i < p->n; i++)
    if (p->slots[i].state != SLOT_IDLE && p->slots[i].page == page)
      return &p->slots[i];
  return NULL;
}

static int running(const osvi_pool *p) {
  int i, k = 0;
  for (i = 0; i < p->n; i++)
    k += p->slots[i].state == SLOT_RUNNING || p->slots[i].state == SLOT_WAITING;
  return k;
}

/* Starts (or, with url NULL, restarts) the slot's transfer. */
static void start(osvi_pool *p, slot *s, const char *url) {
  if (osvi_http_prepare(&s->http, url) != CURLE_OK ||
      curl_multi_add_handle(p->multi, s->http.easy) != CURLM_OK) {
    s->state = SLOT_DONE;
    s->rc = CURLE_FAILED_INIT;
    s->status = 0;
    return;
  }
  s->state = SLOT_RUNNING;
  s->attempt++;
}

/* Asks for `page` in an idle slot; returns 0 when there is none. */
static int request(lua_State *L, osvi_pool *p, const char *query,
                   lua_Integer page, lua_Integer per_page) {
  int i;
  for (i = 0; i < p->n; i++) {
    slot *s = &p->slots[i];
    if (s->state != SLOT_IDLE) continue;
    osvi_query_push_full(L, query, page, per_page);
    osvi_client_url(L, p->client, lua_tostring(L, -1));
    s->page = page;
    s->attempt = 0;
    s->started = now();
    osvi_http_budget(&s->http, 1 + p->client->max_retries);
    start(p, s, lua_tostring(L, -1));
    lua_pop(L, 2);
    return 1;
  }
  return 0;
}

/* Handles the transfers that finished: a final result, or a retry later. */
static void collect(osvi_pool *p) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(p->multi, &left)) != NULL) {
    osvi_http *h;
    slot *s;
    double delay;
    if (m->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&h);
    s = (slot *)(void *)h; /* http is the slot's first member */
    s->rc = m->data.result;
    s->status = 0;
    curl_easy_getinfo(s->http.easy, CURLINFO_RESPONSE_CODE, &s->status);
    curl_multi_remove_handle(p->multi, s->http.easy);
    osvi_client_log(p->client, &s->http, s->rc, s->status, s->attempt);
    if (osvi_client_retry(p->client, &s->http, s->rc, s->status, s->attempt,
                          &delay)) {
      if (s->status == 429 && p->allowed > 1) p->allowed /= 2;
      s->state = SLOT_WAITING;
      s->due = now() + delay;
    } else {
      s->state = SLOT_DONE;
    }
  }
}

/* Restarts the waiting transfers that are due; returns the milliseconds
** until the next one is (or `cap`). */
static long restart_due(osvi_pool *p, long cap) {
  int i;
  double t = now(), wait = (double)cap / 1000;
  for (i = 0; i < p->n; i++) {
    slot *s = &p->slots[i];
    if (s->state != SLOT_WAITING) continue;
    if (s->due <= t) {
      start(p, s, NULL); /* the handle still has its URL */
    } else if (s->due - t < wait) {
      wait = s->due - t;
    }
  }
  return (long)(wait * 1000) + 1;
}

int osvi_pool_step(lua_State *L, osvi_pool *p, const char *query,
                   lua_Integer page, lua_Integer per_page, lua_Integer last,
                   int wait) {
  slot *s;
  int ok;
  if (!p->busy) {
    p->busy = 1;
    p->allowed = p->n;
  }
  s = find(p, page);
  if (s == NULL) { /* a new start: nothing in flight is of use */
    int i;
    for (i = 0; i < p->n; i++) stop(p, &p->slots[i]);
    request(L, p, query, page, per_page);
    p->next = page + 1;
    s = find(p, page);
  }
  for (;;) {
    int still;
    long ms;
    curl_multi_perform(p->multi, &still);
    collect(p);
    ms = restart_due(p, 1000);
    if (s->state == SLOT_DONE) break;
    if (!wait) return -1;
    curl_multi_poll(p->multi, NULL, 0, (int)ms, NULL);
  }
  ok = osvi_client_result(L, &s->http, s->rc, s->status, s->attempt,
                          now() - s->started);
  s->state = SLOT_IDLE;
  s->page = 0;
  if (p->next <= page) p->next = page + 1;
  osvi_pool_fill(L, p, query, per_page, last);
  return ok;
}

void osvi_pool_fill(lua_State *L, osvi_pool *p, const char *query,
                    lua_Integer per_page, lua_Integer last) {
  int asked = 0;
  while (p->next <= last && running(p) < p->allowed &&
         request(L, p, query, p->next, per_page)) {
    p->next++;
    asked = 1;
  }
  if (asked) osvi_pool_pump(p); /* on their way now, not at the next fetch */
}

void osvi_pool_pump(osvi_pool *p) {
  int still;
  curl_multi_perform(p->multi, &still);
  collect(p);
  restart_due(p, 0);
}

int osvi_pool_open(lua_State *L) {
  if (luaL_newmetatable(L, OSVI_POOL_MT)) {
    lua_pushcfunction(L, pool_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  return 0;
}
