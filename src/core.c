/*
** The paging core: what to request, which failures to retry and when, and
** how answers become calls -- every call once, in the API's order. It does
** no I/O and knows no transport (the design of h11 and nghttp2's session):
**
**   filters ──> osvi_core_new
**                  │ next_request(now) ──> (id, query) ──> a transport sends
**                  │ answer(id, status, body) <──┐
**                  │ failed(id, error)   <───────┴──── the transport's result
**                  │ timeout(now) ──> when the next retry is due
**                  ▼
**               next_page(now) ──> a page of new calls | WAIT | DONE | error
**
** The transports (transport.c: libcurl easy and multi; the Lua binding at the
** end of this file for cosockets and host loops) call in; nothing here calls
** out. Decoding (decode.c) and the filters (query.c) are below it.
**
** Exactly once. The listing is newest first and calls arrive at the top. A
** call's rank -- its position counted from the oldest end, total_count minus
** its index in the listing plus one -- does not change while calls arrive.
** Page p of per_page m, read when total_count was T, holds the ranks
** T-(p-1)m down to T-pm+1, whenever it was read. The first answer fixes the
** top rank; from there the core hands out ranks downwards, each once:
**   - an answer's calls above the next rank were handed out already
**     (overlap: dropped);
**   - a rank below the next one that no answer holds is a gap: the page that
**     holds it now (by the newest total_count) is read again, at most
**     MAX_REREADS times in a row before the listing fails `inconsistent`;
**   - answers that hold only lower ranks wait (pages completed out of
**     order), within the window of prefetched pages.
** Calls that arrive during the listing have ranks above the top and are not
** handed out. Calls that leave a filtered view shift the ranks of the calls
** newer than them: the calls handed out last then show up again at the head
** of the next answer. Those repeats are dropped (call_ids of the last two
** pages handed out are compared), every other answer read before is
** discarded, and paging goes on from the answer that showed the shift
** (a resync; at most MAX_RESYNCS, then `inconsistent`).
**
** Memory is bounded by the slots (the pages in flight or waiting) and the
** last two pages handed out, never by the length of the listing.
**
** Uservalues of the core userdata: the frozen query (filters without page
** and per_page), the slots' answers (slot + 1 -> page or error object), and
** the last pages handed out (for the repeat check).
*/
#include <math.h>
#include <string.h>

#include "osvi.h"

#define MAX_REREADS 8       /* reads of one missing rank before giving up */
#define MAX_RESYNCS 8       /* shifts of the listing followed in a row */
#define MAX_RETRY_AFTER 120 /* seconds: longer waits are returned, not slept */
#define MAX_BACKOFF 60.0    /* seconds */

enum { UV_QUERY = 1, UV_ANSWERS, UV_RECENT, UV_META, UV_COUNT = UV_META };

enum { S_FREE, S_PLANNED, S_SENT, S_WAITING, S_ANSWERED, S_FAILED };

typedef struct slot {
  int state;
  unsigned id;        /* of the request in flight (S_SENT) */
  lua_Integer page;   /* the page asked for */
  lua_Integer lo, hi; /* ranks: meant to cover, then (S_ANSWERED) held */
  int attempts;       /* requests sent for it, re-sends included */
  double first_sent;  /* when it was first sent (-1: not yet) */
  double due;         /* S_WAITING: when to send it again */
} slot;

struct osvi_core {
  int mode;
  int window;  /* slots in use allowed for pages ahead (prefetch, >= 1) */
  int allowed; /* requests in flight allowed now; a 429 halves it for the
               ** rest of the listing */
  int max_retries;
  double retry_base;
  uint64_t rng;
  lua_Integer first_page; /* the page the listing starts at */
  lua_Integer per_page;   /* asked for */
  lua_Integer remaining;  /* calls still wanted (limit); -1: all */
  int started;            /* the first answer has fixed the top */
  int done;
  lua_Integer top;         /* the rank of the first call */
  lua_Integer next_rank;   /* the rank to hand out next */
  lua_Integer planned_low; /* the lowest rank asked for ahead */
  lua_Integer tnow;        /* the newest total_count known: of the answer to
                          ** the request sent last among those answered */
  unsigned tnow_id;        /* that request */
  lua_Integer m;           /* the server's per_page */
  lua_Integer stuck_rank;  /* the rank re-read last, and how often */
  int rereads;
  int resyncs;
  unsigned next_id;
  /* figures for cur.stats */
  lua_Integer requests, pages, calls, repeats, total_rereads, total_resyncs;
  slot s[OSVI_CORE_SLOTS];
};

/* ------------------------------------------------------------------------
** Small helpers
** --------------------------------------------------------------------- */

static double jitter01(osvi_core *c) {
  uint64_t x = c->rng;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  c->rng = x;
  return (double)(x >> 11) / 9007199254740992.0;
}

static int retryable_status(long s) {
  return s == 408 || s == 429 || s == 500 || s == 502 || s == 503 || s == 504;
}

static int in_use(const osvi_core *c) {
  int i, n = 0;
  for (i = 0; i < OSVI_CORE_SLOTS; i++) n += c->s[i].state != S_FREE;
  return n;
}

int osvi_core_in_flight(const osvi_core *c) {
  int i, n = 0;
  for (i = 0; i < OSVI_CORE_SLOTS; i++)
    n += c->s[i].state == S_SENT || c->s[i].state == S_WAITING;
  return n;
}

/* The answers table of the core at `core`: [-0, +1] */
static void push_answers(lua_State *L, int core) {
  lua_getiuservalue(L, core, UV_ANSWERS);
}

/* Forgets slot i and its answer. */
static void free_slot(lua_State *L, int core, osvi_core *c, int i) {
  c->s[i].state = S_FREE;
  c->s[i].id = 0;
  push_answers(L, core);
  lua_pushnil(L);
  lua_rawseti(L, -2, i + 1);
  lua_pop(L, 1);
}

/* Takes a free slot for `page` meant to cover ranks lo..hi; -1 if none. */
static int plan(osvi_core *c, lua_Integer page, lua_Integer lo,
                lua_Integer hi) {
  int i;
  for (i = 0; i < OSVI_CORE_SLOTS; i++) {
    slot *s = &c->s[i];
    if (s->state != S_FREE) continue;
    memset(s, 0, sizeof *s);
    s->state = S_PLANNED;
    s->page = page;
    s->lo = lo;
    s->hi = hi;
    s->first_sent = -1;
    return i;
  }
  return -1;
}

/* The page that holds rank r by the newest total_count, and the lowest rank
** it holds (not below `floor`). When calls left the view, the newest total
** may be below r: then the first page. */
static lua_Integer page_of(const osvi_core *c, lua_Integer r, lua_Integer floor,
                           lua_Integer *lo) {
  lua_Integer page, low;
  if (c->tnow < r) {
    page = 1;
    low = r - c->m + 1;
  } else {
    page = (c->tnow - r) / c->m + 1;
    low = c->tnow - page * c->m + 1; /* <= r: no overflow */
  }
  *lo = low < floor ? floor : low;
  return page;
}

/* The lowest rank still wanted: 1, or fewer when a limit is near. */
static lua_Integer lowest_wanted(const osvi_core *c) {
  if (c->remaining < 0 || c->remaining > c->next_rank) return 1;
  return c->next_rank - c->remaining + 1;
}

/* Asks for the pages after the ones asked for, within the window. */
static void plan_ahead(osvi_core *c) {
  lua_Integer floor;
  if (c->mode != OSVI_CORE_LIST || !c->started || c->done) return;
  floor = lowest_wanted(c);
  if (c->planned_low > c->next_rank + 1) c->planned_low = c->next_rank + 1;
  while (in_use(c) < c->window && c->planned_low - 1 >= floor) {
    lua_Integer lo, r = c->planned_low - 1;
    lua_Integer page = page_of(c, r, floor, &lo);
    if (plan(c, page, lo, r) < 0) break;
    c->planned_low = lo;
  }
}

/* ------------------------------------------------------------------------
** Construction
** --------------------------------------------------------------------- */

osvi_core *osvi_core_check(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, OSVI_CORE_MT);
}

osvi_core *osvi_core_new(lua_State *L, int fidx, osvi_core_mode mode,
                         const osvi_core_policy *policy) {
  osvi_filters f;
  osvi_core *c;
  int core;
  osvi_query_check(
      L, fidx, mode == OSVI_CORE_LIST ? OSVI_QUERY_ITERATE : OSVI_QUERY_PAGE,
      &f);                                       /* query */
  c = lua_newuserdatauv(L, sizeof *c, UV_COUNT); /* query, core */
  memset(c, 0, sizeof *c);
  luaL_setmetatable(L, OSVI_CORE_MT);
  lua_insert(L, -2); /* core, query */
  core = lua_gettop(L) - 1;
  lua_setiuservalue(L, core, UV_QUERY);
  lua_newtable(L);
  lua_setiuservalue(L, core, UV_ANSWERS);
  lua_createtable(L, 4, 0);
  lua_setiuservalue(L, core, UV_RECENT);

  c->mode = mode;
  c->max_retries = policy->max_retries;
  c->retry_base = policy->retry_base;
  c->rng = policy->seed | 1;
  /* the pages in flight while the caller works through one: prefetch of
  ** them, or the next one only */
  c->window =
      mode == OSVI_CORE_LIST && policy->prefetch > 0 ? policy->prefetch : 1;
  if (c->window > OSVI_CORE_SLOTS - 1) c->window = OSVI_CORE_SLOTS - 1;
  c->allowed = c->window;
  c->first_page = f.page > 0 ? f.page : (mode == OSVI_CORE_LIST ? 1 : 0);
  if (mode == OSVI_CORE_LIST && f.per_page <= 0) /* fewer for a small limit */
    c->per_page = f.limit > 0 && f.limit < 100 ? f.limit : 100;
  else
    c->per_page = f.per_page;
  c->remaining = mode == OSVI_CORE_LIST ? f.limit : -1;
  c->next_id = 1;
  if (mode == OSVI_CORE_LIST && c->remaining == 0)
    c->done = 1; /* limit = 0: nothing to ask for */
  else
    plan(c, c->first_page, 0, 0);
  return c;
}

void osvi_core_one_page(osvi_core *c, lua_Integer page, lua_Integer per_page) {
  if (c->mode != OSVI_CORE_ONE) return;
  c->first_page = page;
  c->per_page = per_page;
  c->s[0].page = page;
}

/* ------------------------------------------------------------------------
** Requests out, answers in
** --------------------------------------------------------------------- */

/* Whether slot i holds rank r by what it was meant to cover. */
static int meant_for(const slot *s, lua_Integer r) {
  return s->lo <= r && r <= s->hi;
}

/* Whether slot s may be sent at `now`, with `flying` requests in flight. */
static int sendable(const osvi_core *c, const slot *s, double now,
                    int nflying) {
  int ready = s->state == S_PLANNED || (s->state == S_WAITING && s->due <= now);
  if (!ready) return 0;
  /* a 429 lowers how many may be in flight; the head is always allowed */
  return nflying < c->allowed || !c->started || meant_for(s, c->next_rank);
}

static int flying(const osvi_core *c) {
  int i, n = 0;
  for (i = 0; i < OSVI_CORE_SLOTS; i++) n += c->s[i].state == S_SENT;
  return n;
}

int osvi_core_next_request(lua_State *L, int core, double now,
                           osvi_core_request *out) {
  osvi_core *c = osvi_core_check(L, core);
  int i, best = -1, f;
  slot *s;
  const char *query;
  plan_ahead(c);
  f = flying(c);
  for (i = 0; i < OSVI_CORE_SLOTS; i++) {
    if (!sendable(c, &c->s[i], now, f)) continue;
    /* the page the head waits for first, then the newest ranks first */
    if (best < 0 || (c->started && meant_for(&c->s[i], c->next_rank)) ||
        (!(c->started && meant_for(&c->s[best], c->next_rank)) &&
         c->s[i].hi > c->s[best].hi))
      best = i;
  }
  if (best < 0) return 0;
  s = &c->s[best];
  s->state = S_SENT;
  s->id = c->next_id++;
  if (c->next_id == 0) c->next_id = 1;
  if (s->first_sent < 0) s->first_sent = now;
  c->requests++;
  out->id = s->id;
  out->page = s->page;
  out->attempt = s->attempts + 1;
  out->budget = 1 + c->max_retries - s->attempts;
  if (out->budget < 1) out->budget = 1;
  lua_getiuservalue(L, core, UV_QUERY);
  query = lua_tostring(L, -1);
  osvi_query_push_full(L, query ? query : "", s->page, c->per_page);
  lua_remove(L, -2);
  return 1;
}

static int find_sent(const osvi_core *c, unsigned id) {
  int i;
  if (id == 0) return -1;
  for (i = 0; i < OSVI_CORE_SLOTS; i++)
    if (c->s[i].state == S_SENT && c->s[i].id == id) return i;
  return -1;
}

/* After a failed attempt of slot i: 1 (and the slot waits) when another
** attempt is to be made. */
static int schedule_retry(osvi_core *c, slot *s, long retry_after, double now) {
  double delay;
  if (s->attempts >= 1 + c->max_retries) return 0;
  if (retry_after > MAX_RETRY_AFTER) return 0; /* returned, not slept */
  if (retry_after >= 0) {
    delay = (double)retry_after;
  } else {
    double d = c->retry_base * pow(2.0, s->attempts - 1);
    if (d > MAX_BACKOFF) d = MAX_BACKOFF;
    delay = d / 2 + d / 2 * jitter01(c);
  }
  s->state = S_WAITING;
  s->due = now + delay;
  return 1;
}

/* Stores the final error at the top (popped) for slot i, with how many
** attempts it took and over how long, worded for the query it answered
** (a 404 with or without an agent_uuid). */
static void fail_slot(lua_State *L, int core, osvi_core *c, int i, double now) {
  slot *s = &c->s[i];
  lua_getiuservalue(L, core, UV_QUERY); /* err,query */
  lua_insert(L, -2);
  osvi_decode_explain(L, lua_tostring(L, -2));
  lua_remove(L, -2);
  osvi_error_attempts(L, s->attempts, now - s->first_sent);
  push_answers(L, core);
  lua_insert(L, -2);
  lua_rawseti(L, -2, i + 1);
  lua_pop(L, 1);
  s->state = S_FAILED;
}

/* Reads the integer meta field `name` of the page at idx. */
static lua_Integer meta_int(lua_State *L, int meta, const char *name) {
  lua_Integer v;
  lua_getfield(L, meta, name);
  v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* The page at the top is the answer for slot i: checks it against what was
** asked, places its calls on the rank axis and keeps it. [-1, +0] */
static void keep_answer(lua_State *L, int core, osvi_core *c, int i,
                        long status, size_t bytes, double now) {
  slot *s = &c->s[i];
  int page = lua_gettop(L), meta;
  lua_Integer current, total, m, n;
  lua_getfield(L, page, "meta");
  meta = lua_gettop(L);
  current = meta_int(L, meta, "current_page");
  total = meta_int(L, meta, "total_count");
  m = meta_int(L, meta, "per_page");
  lua_getfield(L, page, "data");
  n = (lua_Integer)lua_rawlen(L, -1);
  lua_pop(L, 2);
  if (s->page > 0 && current != s->page) {
    lua_pop(L, 1);
    osvi_error_push(L, OSVI_E_DECODE, status,
                    "asked for page %I, the server answered page %I",
                    (LUAI_UACINT)s->page, (LUAI_UACINT)current);
    fail_slot(L, core, c, i, now);
    return;
  }
  if (c->mode == OSVI_CORE_LIST) {
    if (m < 1) {
      if (n > 0) {
        lua_pop(L, 1);
        osvi_error_push(L, OSVI_E_DECODE, status,
                        "meta.per_page is 0 on a page with calls");
        fail_slot(L, core, c, i, now);
        return;
      }
      m = c->m > 0 ? c->m : c->per_page;
    }
    c->m = m;
    if (s->id >= c->tnow_id) {
      c->tnow = total;
      c->tnow_id = s->id;
    }
    /* ranks held: from total - (page-1)m down, as many as there are calls
    ** (and none below 1); page-1 > total/m means past the end */
    if (s->page - 1 > total / m) {
      s->hi = 0;
    } else {
      s->hi = total - (s->page - 1) * m;
    }
    s->lo = s->hi - n + 1;
    if (s->lo < 1) s->lo = 1;
    if (s->hi < 1) s->lo = 1; /* holds nothing */
  }
  /* how it was fetched: page.fetch = {status, attempts, elapsed, bytes} */
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "status");
  lua_pushinteger(L, s->attempts);
  lua_setfield(L, -2, "attempts");
  lua_pushnumber(L, now - s->first_sent);
  lua_setfield(L, -2, "elapsed");
  lua_pushinteger(L, (lua_Integer)bytes);
  lua_setfield(L, -2, "bytes");
  lua_setfield(L, page, "fetch");
  push_answers(L, core);
  lua_insert(L, -2);
  lua_rawseti(L, -2, i + 1);
  lua_pop(L, 1);
  s->state = S_ANSWERED;
}

void osvi_core_answer(lua_State *L, int core, unsigned id, long status,
                      long retry_after, int body, int sends, double now) {
  osvi_core *c = osvi_core_check(L, core);
  int i = find_sent(c, id);
  size_t len;
  const char *text;
  slot *s;
  body = lua_absindex(L, body);
  if (i < 0) return; /* not waited for (any more) */
  s = &c->s[i];
  s->attempts += sends > 0 ? sends : 1;
  if (retryable_status(status) && schedule_retry(c, s, retry_after, now)) {
    if (status == 429 && c->allowed > 1) c->allowed /= 2;
    return;
  }
  /* Decoding runs Lua (and so, maybe, finalisers that use this core): the
  ** slot is planned again meanwhile, so that an error thrown from it (out of
  ** memory) leaves a request to send again rather than one never answered. */
  s->state = S_PLANNED;
  text = lua_tolstring(L, body, &len);
  if (osvi_decode_response(L, status, text ? text : "", text ? len : 0,
                           retry_after)) {
    if (c->s[i].state == S_PLANNED)
      keep_answer(L, core, c, i, status, len, now);
    else
      lua_pop(L, 1);
  } else if (c->s[i].state == S_PLANNED) {
    fail_slot(L, core, c, i, now);
  } else {
    lua_pop(L, 1);
  }
}

void osvi_core_failed(lua_State *L, int core, unsigned id, int retryable,
                      int sends, double now) {
  osvi_core *c = osvi_core_check(L, core);
  int i = find_sent(c, id);
  slot *s;
  if (i < 0) {
    lua_pop(L, 1);
    return;
  }
  s = &c->s[i];
  s->attempts += sends > 0 ? sends : 1;
  if (retryable && schedule_retry(c, s, -1, now)) {
    lua_pop(L, 1);
    return;
  }
  fail_slot(L, core, c, i, now);
}

void osvi_core_lost(osvi_core *c) {
  int i;
  for (i = 0; i < OSVI_CORE_SLOTS; i++)
    if (c->s[i].state == S_SENT) {
      c->s[i].state = S_PLANNED;
      c->s[i].id = 0;
    }
}

double osvi_core_timeout(const osvi_core *c, double now) {
  int i, f = flying(c);
  double t = -1;
  for (i = 0; i < OSVI_CORE_SLOTS; i++) {
    const slot *s = &c->s[i];
    double d;
    if (sendable(c, s, now, f)) return 0;
    if (s->state != S_WAITING) continue;
    d = s->due - now;
    if (d < 0) d = 0;
    if (t < 0 || d < t) t = d;
  }
  return t;
}

/* ------------------------------------------------------------------------
** Answers out, in order
** --------------------------------------------------------------------- */

/* Pushes the error for a listing that cannot be followed. */
static int inconsistent(lua_State *L, const char *fmt, lua_Integer a, int b) {
  osvi_error_push(L, OSVI_E_INCONSISTENT, 0, fmt, (LUAI_UACINT)a, b);
  return OSVI_CORE_ERROR;
}

/* Whether the call_id of the call at the top was among the last pages
** handed out. Pops the call. */
static int repeated(lua_State *L, int core) {
  int k, found = 0;
  if (lua_getfield(L, -1, "call_id") != LUA_TSTRING) {
    lua_pop(L, 2);
    return 0;
  }
  lua_getiuservalue(L, core, UV_RECENT); /* call, id, recent */
  for (k = 1; k <= 3 && !found; k += 2) {
    /* recent[k] the data of a page handed out, recent[k+1] its id set,
    ** made the first time it is needed */
    if (lua_rawgeti(L, -1, k + 1) != LUA_TTABLE) {
      lua_Integer j, n;
      lua_pop(L, 1);
      if (lua_rawgeti(L, -1, k) != LUA_TTABLE) {
        lua_pop(L, 1);
        continue;
      }
      n = (lua_Integer)lua_rawlen(L, -1);
      lua_createtable(L, 0, (int)n);
      for (j = 1; j <= n; j++) {
        lua_rawgeti(L, -2, j); /* data, set, call */
        if (lua_type(L, -1) == LUA_TTABLE) {
          if (lua_getfield(L, -1, "call_id") == LUA_TSTRING) {
            lua_pushboolean(L, 1);
            lua_rawset(L, -4); /* set[id] = true */
          } else {
            lua_pop(L, 1);
          }
        }
        lua_pop(L, 1);
      }
      lua_remove(L, -2);
      lua_pushvalue(L, -1);
      lua_rawseti(L, -3, k + 1);
    }
    lua_pushvalue(L, -3);
    found = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
  }
  lua_pop(L, 3);
  return found;
}

/* Remembers the data at the top (popped) as the newest page handed out. */
static void remember(lua_State *L, int core) {
  lua_getiuservalue(L, core, UV_RECENT);
  lua_rawgeti(L, -1, 1);
  lua_rawseti(L, -2, 3);
  lua_rawgeti(L, -1, 2);
  lua_rawseti(L, -2, 4);
  lua_insert(L, -2);
  lua_rawseti(L, -2, 1);
  lua_pushnil(L);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 1);
}

/* Drops every answer and request but slot `keep`: they were read on the
** other side of a shift of the listing. */
static void resync(lua_State *L, int core, osvi_core *c, int keep) {
  int i;
  for (i = 0; i < OSVI_CORE_SLOTS; i++)
    if (i != keep && c->s[i].state != S_FREE) free_slot(L, core, c, i);
  c->planned_low = c->s[keep].lo;
}

/* Hands out slot i's calls from next_rank down: pushes the page and
** returns PAGE, or returns WAIT with nothing pushed when none was new. */
static int hand_out(lua_State *L, int core, osvi_core *c, int i) {
  slot *s = &c->s[i];
  int page, data, meta;
  lua_Integer n, first, last, skipped = 0;
  push_answers(L, core);
  lua_rawgeti(L, -1, i + 1);
  lua_remove(L, -2);
  page = lua_gettop(L);
  lua_getfield(L, page, "data");
  data = page + 1;
  lua_getfield(L, page, "meta");
  meta = page + 2;
  n = (lua_Integer)lua_rawlen(L, data);
  first = s->hi - c->next_rank + 1; /* index of the call at next_rank */
  last = s->hi - s->lo + 1;
  if (last > n) last = n;
  /* the head of an answer may repeat the calls handed out last: then the
  ** listing shifted (calls left the view) and what was read before it is
  ** of another listing */
  while (first <= last) {
    lua_rawgeti(L, data, first);
    if (!repeated(L, core)) break;
    first++;
    skipped++;
  }
  if (skipped > 0) {
    c->repeats += skipped;
    c->total_resyncs++;
    if (++c->resyncs > MAX_RESYNCS) {
      lua_settop(L, page - 1);
      c->resyncs = 0;
      return inconsistent(L,
                          "the listing keeps shifting under the reads (calls "
                          "leave the filtered view): %I calls seen again, %d "
                          "times in a row",
                          c->repeats, MAX_RESYNCS);
    }
    resync(L, core, c, i);
    c->tnow = meta_int(L, meta, "total_count");
    c->tnow_id = s->id;
  } else {
    c->resyncs = 0;
  }
  if (c->remaining >= 0 && last - first + 1 > c->remaining)
    last = first + c->remaining - 1;
  c->next_rank = s->hi - (last > first - 1 ? last : first - 1);
  if (first == 1 && last == n) {
    lua_pushvalue(L, data); /* the whole page: as it came */
  } else {
    lua_Integer j, k;
    lua_createtable(L, last >= first ? (int)(last - first + 1) : 0, 0);
    for (j = first, k = 1; j <= last; j++, k++) {
      lua_rawgeti(L, data, j);
      lua_rawseti(L, -2, k);
    }
  }
  n = last >= first ? last - first + 1 : 0;
  free_slot(L, core, c, i);
  if (c->remaining >= 0) c->remaining -= n;
  if (c->next_rank < 1 || c->remaining == 0) c->done = 1;
  if (n == 0) {
    lua_settop(L, page - 1);
    return OSVI_CORE_WAIT;
  }
  c->pages++;
  c->calls += n;
  c->rereads = 0;
  /* the page handed out: {data = new calls, meta, fetch} */
  lua_pushvalue(L, -1);
  remember(L, core);
  lua_createtable(L, 0, 3);
  lua_insert(L, -2);
  lua_setfield(L, -2, "data");
  lua_pushvalue(L, meta);
  lua_setfield(L, -2, "meta");
  lua_getfield(L, page, "fetch");
  lua_setfield(L, -2, "fetch");
  lua_pushvalue(L, meta);
  lua_setiuservalue(L, core, UV_META);
  lua_replace(L, page);
  lua_settop(L, page);
  return OSVI_CORE_PAGE;
}

/* The first answer fixes the top rank. Returns 0 when the listing is empty
** (a page past the end). */
static int start(osvi_core *c, const slot *s) {
  c->started = 1;
  c->top = s->hi;
  c->next_rank = s->hi;
  c->planned_low = s->lo <= s->hi ? s->lo : s->hi + 1;
  if (c->top < 1) {
    c->done = 1;
    return 0;
  }
  return 1;
}

/* Pushes slot i's error, and plans it again for the caller who retries. */
static int hand_error(lua_State *L, int core, osvi_core *c, int i) {
  push_answers(L, core);
  lua_rawgeti(L, -1, i + 1);
  lua_remove(L, -2);
  {
    slot *s = &c->s[i];
    lua_Integer page = s->page, lo = s->lo, hi = s->hi;
    free_slot(L, core, c, i);
    plan(c, page, lo, hi);
  }
  return OSVI_CORE_ERROR;
}

static int next_one(lua_State *L, int core, osvi_core *c) {
  int i;
  for (i = 0; i < OSVI_CORE_SLOTS; i++) {
    if (c->s[i].state == S_ANSWERED) {
      push_answers(L, core);
      lua_rawgeti(L, -1, i + 1);
      lua_remove(L, -2);
      free_slot(L, core, c, i);
      c->done = 1;
      c->pages++;
      return OSVI_CORE_PAGE;
    }
    if (c->s[i].state == S_FAILED) return hand_error(L, core, c, i);
  }
  return OSVI_CORE_WAIT;
}

int osvi_core_next_page(lua_State *L, int core, double now) {
  osvi_core *c = osvi_core_check(L, core);
  (void)now;
  core = lua_absindex(L, core);
  if (c->done) return OSVI_CORE_DONE;
  if (c->mode == OSVI_CORE_ONE) return next_one(L, core, c);
  for (;;) {
    int i, head = -1, waiting = 0, failed = -1;
    if (c->done) return OSVI_CORE_DONE;
    if (!c->started) {
      for (i = 0; i < OSVI_CORE_SLOTS; i++) {
        if (c->s[i].state == S_FAILED) return hand_error(L, core, c, i);
        if (c->s[i].state == S_ANSWERED) break;
      }
      if (i == OSVI_CORE_SLOTS) return OSVI_CORE_WAIT;
      if (!start(c, &c->s[i])) {
        free_slot(L, core, c, i);
        return OSVI_CORE_DONE;
      }
    }
    for (i = 0; i < OSVI_CORE_SLOTS; i++) {
      slot *s = &c->s[i];
      if (s->state == S_ANSWERED) {
        if (s->hi < 1 || s->lo > c->next_rank) {
          free_slot(L, core, c, i); /* nothing new in it */
        } else if (s->hi >= c->next_rank && head < 0) {
          head = i;
        }
      } else if (s->state == S_FREE) {
        continue;
      } else if (s->state != S_SENT && s->lo > c->next_rank) {
        free_slot(L, core, c, i); /* meant for ranks handed out already */
      } else if (meant_for(s, c->next_rank)) {
        if (s->state == S_FAILED)
          failed = i;
        else
          waiting = 1;
      }
    }
    if (head >= 0) {
      int r = hand_out(L, core, c, head);
      if (r == OSVI_CORE_WAIT) continue; /* only repeats: look again */
      return r;
    }
    if (waiting) return OSVI_CORE_WAIT;
    if (failed >= 0) return hand_error(L, core, c, failed);
    /* a gap: nothing holds next_rank, nor is meant to. Read again the
    ** page that holds it by the newest total_count. */
    if (c->stuck_rank == c->next_rank) {
      if (++c->rereads > MAX_REREADS) {
        c->rereads = 0;
        return inconsistent(L,
                            "the call at position %I (from the oldest) "
                            "could not be read after %d reads of its page: "
                            "calls arrive faster than pages are read, or the "
                            "server's pages disagree with its total_count",
                            c->next_rank, MAX_REREADS);
      }
    } else {
      c->stuck_rank = c->next_rank;
      c->rereads = 1;
    }
    c->total_rereads++;
    {
      lua_Integer lo, page;
      page = page_of(c, c->next_rank, 1, &lo);
      if (plan(c, page, lo, c->next_rank) < 0) {
        /* every slot holds a later page: give up the one furthest ahead */
        int far = -1;
        for (i = 0; i < OSVI_CORE_SLOTS; i++)
          if (c->s[i].state == S_ANSWERED &&
              (far < 0 || c->s[i].hi < c->s[far].hi))
            far = i;
        if (far < 0) return OSVI_CORE_WAIT; /* all in flight: wait */
        if (c->planned_low < c->s[far].hi + 1)
          c->planned_low = c->s[far].hi + 1;
        free_slot(L, core, c, far);
        plan(c, page, lo, c->next_rank);
      }
      if (lo < c->planned_low) c->planned_low = lo;
    }
    return OSVI_CORE_WAIT;
  }
}

int osvi_core_ready(const osvi_core *c) {
  int i;
  if (c->done) return 1;
  for (i = 0; i < OSVI_CORE_SLOTS; i++) {
    const slot *s = &c->s[i];
    if (s->state == S_ANSWERED) {
      /* a page to hand out, or to throw away; one that holds only later
      ** ranks waits for the head */
      if (c->mode == OSVI_CORE_ONE || !c->started || s->hi < 1 ||
          s->hi >= c->next_rank || s->lo > c->next_rank)
        return 1;
    } else if (s->state == S_FAILED) {
      if (c->mode == OSVI_CORE_ONE || !c->started ||
          meant_for(s, c->next_rank) || s->lo > c->next_rank)
        return 1;
    }
  }
  return 0;
}

void osvi_core_push_stats(lua_State *L, const osvi_core *c) {
  lua_createtable(L, 0, 8);
#define STAT(name, v)      \
  lua_pushinteger(L, (v)); \
  lua_setfield(L, -2, name)
  STAT("requests", c->requests);
  STAT("pages", c->pages);
  STAT("calls", c->calls);
  STAT("rereads", c->total_rereads);
  STAT("resyncs", c->total_resyncs);
  STAT("repeats", c->repeats);
  STAT("in_flight", osvi_core_in_flight(c));
  if (c->started) {
    STAT("top", c->top);
    STAT("total_count", c->tnow);
  }
#undef STAT
}

void osvi_core_push_meta(lua_State *L, int core) {
  lua_getiuservalue(L, core, UV_META);
}

/* ------------------------------------------------------------------------
** The Lua binding: osvi.core(filters [, options]), for a transport written
** in Lua (OpenResty's cosockets, a host's own event loop).
**
**   local core = osvi.core({status = "picked"}, {prefetch = 4})
**   for _, r in ipairs(core:requests()) do  -- {id, query, page}
**     ... send GET /v1/calls?<r.query> ... then one of:
**     core:answer(r.id, status, body, retry_after)
**     core:failed(r.id, kind, message, retryable)
**   end
**   local page, err = core:next_page()  -- page | false (wait) | nil (done)
**   core:timeout()                      -- seconds until a retry is due
** `now` (monotonic seconds) can be given as a last argument to each, for
** simulated time; it defaults to the clock. After `now`, for transports
** that re-send on their own (a kept-alive connection found dead, as libcurl
** does): each request carries `attempt` and `budget` (requests the
** transport may send for it, re-sends included), and answer() and failed()
** take `sends`, how many it sent (default 1). failed() then takes the HTTP
** `status` of a response that began but did not complete (a body cut off
** or over the cap).
** --------------------------------------------------------------------- */

static double arg_now(lua_State *L, int idx) {
  return lua_isnoneornil(L, idx) ? osvi_now() : luaL_checknumber(L, idx);
}

static int policy_int(lua_State *L, int opts, const char *key, int def, int min,
                      int max) {
  lua_Integer v;
  int ok;
  if (opts == 0 || lua_getfield(L, opts, key) == LUA_TNIL) {
    if (opts != 0) lua_pop(L, 1);
    return def;
  }
  v = lua_tointegerx(L, -1, &ok);
  if (!ok || v < min || v > max)
    osvi_usage_error(L, key,
                     "osvi.core: option '%s': expected an integer "
                     "from %d to %d",
                     key, min, max);
  lua_pop(L, 1);
  return (int)v;
}

/* osvi.core([filters [, options]]) -> core, for a listing; options: prefetch,
** max_retries, retry_base, seed, one (true: a single page, as page()),
** count (true: one call of the first page, as count(): meta.total_count). */
static int core_new_lua(lua_State *L) {
  osvi_core_policy p;
  int opts = lua_istable(L, 2) ? 2 : 0, one = 0, count = 0;
  if (!lua_isnoneornil(L, 2) && opts == 0)
    osvi_usage_error(L, NULL, "osvi.core: expected a table of options, got %s",
                     luaL_typename(L, 2));
  p.prefetch = policy_int(L, opts, "prefetch", 0, 0, OSVI_MAX_PREFETCH);
  p.max_retries = policy_int(L, opts, "max_retries", 2, 0, 10);
  p.retry_base = 0.5;
  p.seed = (uint64_t)(osvi_now() * 1e6) ^ 0x9E3779B97F4A7C15ULL;
  if (opts != 0) {
    if (lua_getfield(L, opts, "retry_base") != LUA_TNIL) {
      p.retry_base = lua_tonumber(L, -1);
      if (lua_type(L, -1) != LUA_TNUMBER || !(p.retry_base >= 0) ||
          p.retry_base > 60)
        osvi_usage_error(L, "retry_base",
                         "osvi.core: option 'retry_base': "
                         "expected a number from 0 to 60");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, opts, "seed") != LUA_TNIL)
      p.seed = (uint64_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, opts, "one");
    one = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, opts, "count");
    count = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  osvi_core_new(L, 1, one || count ? OSVI_CORE_ONE : OSVI_CORE_LIST, &p);
  if (count) osvi_core_one_page(osvi_core_check(L, -1), 0, 1);
  return 1;
}

/* The optional `sends` argument at idx: requests sent for one attempt. */
static int arg_sends(lua_State *L, int idx) {
  lua_Integer n = luaL_optinteger(L, idx, 1);
  luaL_argcheck(L, n >= 1 && n <= 100, idx, "expected a count from 1 to 100");
  return (int)n;
}

/* core:requests([now]) -> {{id =, query =, page =, attempt =, budget =},
** ...}: every request to send now (each is then in flight until answered
** or failed). */
static int core_requests(lua_State *L) {
  osvi_core_request r;
  double now;
  lua_Integer n = 0;
  osvi_core_check(L, 1);
  now = arg_now(L, 2);
  lua_settop(L, 1);
  lua_newtable(L);
  while (osvi_core_next_request(L, 1, now, &r)) {
    lua_createtable(L, 0, 5);
    lua_insert(L, -2);
    lua_setfield(L, -2, "query");
    lua_pushinteger(L, (lua_Integer)r.id);
    lua_setfield(L, -2, "id");
    lua_pushinteger(L, r.page);
    lua_setfield(L, -2, "page");
    lua_pushinteger(L, r.attempt);
    lua_setfield(L, -2, "attempt");
    lua_pushinteger(L, r.budget);
    lua_setfield(L, -2, "budget");
    lua_rawseti(L, 2, ++n);
  }
  return 1;
}

/* core:answer(id, status, body [, retry_after [, now [, sends]]]);
** retry_after is the Retry-After header as received, or seconds. */
static int core_answer_lua(lua_State *L) {
  lua_Integer id = luaL_checkinteger(L, 2);
  lua_Integer status = luaL_checkinteger(L, 3);
  long retry_after = -1;
  double now;
  osvi_core_check(L, 1);
  luaL_checktype(L, 4, LUA_TSTRING);
  if (lua_type(L, 5) == LUA_TSTRING) {
    size_t rlen;
    const char *r = lua_tolstring(L, 5, &rlen);
    retry_after = osvi_http_retry_after(r, rlen);
  } else if (!lua_isnoneornil(L, 5)) {
    lua_Number x = luaL_checknumber(L, 5);
    retry_after = x >= 0 && x < 1e9 ? (long)ceil(x) : -1;
  }
  now = arg_now(L, 6);
  osvi_core_answer(L, 1, (unsigned)id, (long)status, retry_after, 4,
                   arg_sends(L, 7), now);
  return 0;
}

/* core:failed(id, kind, message [, retryable [, now [, sends [, status]]]]) */
static int core_failed_lua(lua_State *L) {
  static const char *const kinds[] = {
#define OSVI_KIND_NAME(name, str) str,
      OSVI_ERROR_KINDS(OSVI_KIND_NAME)
#undef OSVI_KIND_NAME
          NULL};
  lua_Integer id = luaL_checkinteger(L, 2);
  int kind = luaL_checkoption(L, 3, NULL, kinds);
  const char *msg = luaL_optstring(L, 4, "the request failed");
  int retryable = lua_toboolean(L, 5);
  double now = arg_now(L, 6);
  int sends = arg_sends(L, 7);
  lua_Integer status = luaL_optinteger(L, 8, 0);
  osvi_core_check(L, 1);
  luaL_argcheck(L, status == 0 || (status >= 100 && status <= 999), 8,
                "expected an HTTP status");
  osvi_error_push(L, (osvi_kind)kind, (long)status, "%s", msg);
  osvi_core_failed(L, 1, (unsigned)id, retryable, sends, now);
  return 0;
}

/* core:next_page([now]) -> page | false (requests to make, answers to
** wait for) | nil (the end) | nil, err */
static int core_next_page_lua(lua_State *L) {
  double now;
  osvi_core_check(L, 1);
  now = arg_now(L, 2);
  lua_settop(L, 1);
  switch (osvi_core_next_page(L, 1, now)) {
    case OSVI_CORE_PAGE: return 1;
    case OSVI_CORE_WAIT: lua_pushboolean(L, 0); return 1;
    case OSVI_CORE_DONE: lua_pushnil(L); return 1;
    default:
      lua_pushnil(L);
      lua_insert(L, -2);
      return 2;
  }
}

/* core:timeout([now]) -> seconds until a request is due, or nil */
static int core_timeout_lua(lua_State *L) {
  osvi_core *c = osvi_core_check(L, 1);
  double t = osvi_core_timeout(c, arg_now(L, 2));
  if (t < 0)
    lua_pushnil(L);
  else
    lua_pushnumber(L, t);
  return 1;
}

static int core_lost_lua(lua_State *L) {
  osvi_core_lost(osvi_core_check(L, 1));
  return 0;
}

static int core_index(lua_State *L) {
  osvi_core *c = osvi_core_check(L, 1);
  const char *k = lua_tostring(L, 2);
  if (k != NULL && strcmp(k, "stats") == 0) {
    osvi_core_push_stats(L, c);
    return 1;
  }
  if (k != NULL && strcmp(k, "meta") == 0) {
    osvi_core_push_meta(L, 1);
    return 1;
  }
  if (k != NULL && strcmp(k, "in_flight") == 0) {
    lua_pushinteger(L, osvi_core_in_flight(c));
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int core_tostring(lua_State *L) {
  lua_pushfstring(L, "osvi.Core (%p)", lua_touserdata(L, 1));
  return 1;
}

int osvi_core_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"requests", core_requests},
                                     {"answer", core_answer_lua},
                                     {"failed", core_failed_lua},
                                     {"next_page", core_next_page_lua},
                                     {"timeout", core_timeout_lua},
                                     {"lost", core_lost_lua},
                                     {NULL, NULL}};
  if (luaL_newmetatable(L, OSVI_CORE_MT)) {
    lua_pushcfunction(L, core_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, core_tostring);
    lua_setfield(L, -2, "__tostring");
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "methods");
  }
  lua_pop(L, 1);
  lua_pushcfunction(L, core_new_lua);
  lua_setfield(L, -2, "core");
  return 0;
}
