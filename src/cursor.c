/*
** The cursor: a lazy page iterator. With prefetch = 0, page k+1 is fetched
** only when page k is used up; with prefetch = n, pages k+1..k+n are on their
** way (prefetch.c) while the caller works through page k. The cursor is its
** own iterator (__call) and its own closing value, so
** `for call in client:calls(f) do ... end` closes it on break or error.
**
** Uservalues of the cursor userdata:
**   1 the client (kept alive while the cursor is open)
**   2 the frozen query (all filters but page and per_page)
**   3 the current page's data array
**   4 the last page's meta
**   5 set of the call_ids of the previous page, to drop a call that moved
**     across the page boundary because new calls arrived at the top
**   6 the prefetch pool, while pages are on their way (prefetch > 0)
*/
#include <string.h>

#include "osvi.h"

enum {
  UV_CLIENT = 1,
  UV_QUERY,
  UV_DATA,
  UV_META,
  UV_SEEN,
  UV_POOL,
  UV_COUNT = UV_POOL
};

typedef struct osvi_cursor {
  lua_Integer page; /* the page to fetch next */
  lua_Integer per_page;
  lua_Integer remaining; /* calls still allowed by limit; -1: no limit */
  lua_Integer index;     /* calls of the current data handed out */
  lua_Integer count;     /* calls in the current data */
  lua_Integer fetched;   /* pages fetched */
  lua_Integer max_pages; /* bound on fetched, set from the first page */
  lua_Integer total;     /* total_pages of the last page (0: none yet) */
  osvi_pool *pool;       /* = uservalue UV_POOL while it is set */
  int last;              /* no page after the current one */
  int closed;
} osvi_cursor;

static osvi_cursor *check_cursor(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, OSVI_CURSOR_MT);
}

static void set_uv(lua_State *L, int cur, int n) {
  lua_setiuservalue(L, cur, n);
}

/* Releases what the cursor holds but its meta, stopping the transfers in
** flight. Safe twice. */
static int cursor_close(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  k->closed = 1;
  k->index = k->count = 0;
  if (lua_getiuservalue(L, 1, UV_POOL) == LUA_TUSERDATA)
    osvi_pool_release(lua_touserdata(L, -1));
  lua_pop(L, 1);
  lua_pushnil(L);
  set_uv(L, 1, UV_POOL);
  k->pool = NULL;
  lua_pushnil(L);
  set_uv(L, 1, UV_CLIENT);
  lua_pushnil(L);
  set_uv(L, 1, UV_DATA);
  lua_pushnil(L);
  set_uv(L, 1, UV_SEEN);
  return 0;
}

/*
** Drops from data (at idx, n calls) the calls whose call_id was on the
** previous page, compacting the array in place, and pushes the set of this
** page's ids. Returns the new count.
*/
static lua_Integer drop_repeats(lua_State *L, int cur, int data,
                                lua_Integer n) {
  lua_Integer i, kept = 0;
  int seen, fresh;
  lua_getiuservalue(L, cur, UV_SEEN);
  seen = lua_gettop(L);
  lua_createtable(L, 0, (int)n);
  fresh = lua_gettop(L);
  for (i = 1; i <= n; i++) {
    int repeat = 0;
    lua_rawgeti(L, data, i);
    if (lua_getfield(L, -1, "call_id") == LUA_TSTRING) {
      if (lua_istable(L, seen)) {
        lua_pushvalue(L, -1);
        repeat = lua_rawget(L, seen) != LUA_TNIL;
        lua_pop(L, 1);
      }
      lua_pushboolean(L, 1);
      lua_rawset(L, fresh);
    } else {
      lua_pop(L, 1);
    }
    if (repeat) {
      lua_pop(L, 1);
      continue;
    }
    lua_rawseti(L, data, ++kept);
  }
  for (i = kept + 1; i <= n; i++) {
    lua_pushnil(L);
    lua_rawseti(L, data, i);
  }
  lua_remove(L, seen);
  return kept;
}

/* Trims data at idx to its first `keep` calls. */
static void truncate_data(lua_State *L, int data, lua_Integer n,
                          lua_Integer keep) {
  for (; n > keep; n--) {
    lua_pushnil(L);
    lua_rawseti(L, data, n);
  }
}

/* The last page worth asking for ahead: within total_pages as last seen
** (none before the first page), and within what the limit still needs. */
static lua_Integer last_wanted(const osvi_cursor *k) {
  lua_Integer last = k->total;
  if (k->remaining >= 0) {
    lua_Integer need =
        k->page + (k->remaining + k->per_page - 1) / k->per_page - 1;
    if (need < last) last = need;
  }
  return last;
}

/* The cursor's pool (the client's, or its own while the client's is in
** use), kept as uservalue UV_POOL; the client must be at cur + 1. */
static osvi_pool *cursor_pool(lua_State *L, int cur, osvi_cursor *k) {
  if (lua_getiuservalue(L, cur, UV_POOL) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    osvi_client_pool(L, cur + 1);
    lua_pushvalue(L, -1);
    set_uv(L, cur, UV_POOL);
  }
  k->pool = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return k->pool;
}

/*
** Fetches the next page; raises the error object on failure (the cursor
** stays as it was, so the same page can be asked for again). Pushes the
** page table and makes it current: [-0, +1]. With `wait` false (poll), it
** may instead find the page not in yet: returns 0 with nothing pushed.
*/
static int load_page(lua_State *L, int cur, osvi_cursor *k, int wait) {
  osvi_client *c;
  lua_Integer n, current, total;
  int page, data, meta;

  lua_getiuservalue(L, cur, UV_CLIENT);
  c = osvi_client_check(L, -1);
  lua_getiuservalue(L, cur, UV_QUERY);
  if (c->prefetch > 0 || !wait) {
    osvi_pool *pool = cursor_pool(L, cur, k);
    int ok = osvi_pool_step(L, pool, lua_tostring(L, cur + 2), k->page,
                            k->per_page, last_wanted(k), wait);
    if (ok < 0) {
      lua_settop(L, cur);
      return 0;
    }
    if (!ok) lua_error(L);
  } else {
    osvi_query_push_full(L, lua_tostring(L, -1), k->page, k->per_page);
    if (!osvi_client_fetch(L, c, lua_tostring(L, -1))) lua_error(L);
  }
  page = lua_gettop(L);
  lua_getfield(L, page, "data");
  data = page + 1;
  lua_getfield(L, page, "meta");
  meta = page + 2;
  lua_getfield(L, meta, "current_page");
  current = lua_tointeger(L, -1);
  lua_getfield(L, meta, "total_pages");
  total = lua_tointeger(L, -1);
  lua_pop(L, 2);
  if (current != k->page) {
    osvi_error_push(L, OSVI_E_DECODE, 200,
                    "asked for page %I, the server answered page %I",
                    (LUAI_UACINT)k->page, (LUAI_UACINT)current);
    lua_error(L);
  }
  /* Paging must end even if the server's total_pages grows forever: calls
  ** arriving during a long listing may add pages, but not twice as many. */
  if (k->fetched++ == 0) k->max_pages = 2 * total + 10;
  if (k->fetched > k->max_pages) {
    osvi_error_push(L, OSVI_E_DECODE, 200,
                    "paging does not end: %I pages read, the listing had "
                    "%I when it started",
                    (LUAI_UACINT)k->fetched - 1,
                    (LUAI_UACINT)(k->max_pages - 10) / 2);
    lua_error(L);
  }
  n = (lua_Integer)lua_rawlen(L, data);
  k->last = n == 0 || current >= total;
  k->total = total;
  n = drop_repeats(L, cur, data, n);
  set_uv(L, cur, UV_SEEN);
  if (k->remaining >= 0) {
    if (n > k->remaining) {
      truncate_data(L, data, n, k->remaining);
      n = k->remaining;
    }
    k->remaining -= n;
    if (k->remaining == 0) k->last = 1;
  }
  k->page++;
  k->index = 0;
  k->count = n;
  /* now that total_pages is known: the next pages on their way */
  if (!k->last) {
    if (lua_getiuservalue(L, cur, UV_POOL) == LUA_TUSERDATA)
      osvi_pool_fill(L, lua_touserdata(L, -1), lua_tostring(L, cur + 2),
                     k->per_page, last_wanted(k));
    lua_pop(L, 1);
  }
  lua_pushvalue(L, meta);
  set_uv(L, cur, UV_META);
  lua_pushvalue(L, data);
  set_uv(L, cur, UV_DATA);
  lua_settop(L, page);
  lua_replace(L, cur + 1);
  lua_settop(L, cur + 1);
  return 1;
}

/* for-loop step: the next call, or nil at the end. Raises on failure. */
static int cursor_call(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  lua_settop(L, 1);
  for (;;) {
    if (k->closed) return 0;
    if (k->index < k->count) {
      lua_getiuservalue(L, 1, UV_DATA);
      lua_rawgeti(L, -1, ++k->index);
      /* now and then, move the prefetched transfers on (connects, sends,
      ** receives) while the caller works */
      if (k->pool != NULL && (k->index & 31) == 0) osvi_pool_pump(k->pool);
      return 1;
    }
    if (k->last) {
      cursor_close(L);
      return 0;
    }
    load_page(L, 1, k, 1);
    lua_settop(L, 1);
  }
}

/* Whether a cursor (at 1) has nothing more: closed, or past its last page
** (then closed now). */
static int at_end(lua_State *L, osvi_cursor *k) {
  if (k->closed) return 1;
  if (!k->last) return 0;
  cursor_close(L);
  return 1;
}

/* cur:next_page() -> {data, meta} or nil after the last page. */
static int cursor_next_page(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  lua_settop(L, 1);
  if (at_end(L, k)) return 0;
  load_page(L, 1, k, 1);
  k->index = k->count; /* handed out as a page, not one by one */
  return 1;
}

/*
** cur:poll() -> the next page when it is in, false when it is not yet, nil
** after the last page. Never waits: for a host's loop that must not block
** (a game tick, an event loop). Raises on failure, like next_page().
*/
static int cursor_poll(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  lua_settop(L, 1);
  if (at_end(L, k)) return 0;
  if (!load_page(L, 1, k, 0)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  k->index = k->count;
  return 1;
}

static int cursor_index(lua_State *L) {
  check_cursor(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING &&
      strcmp(lua_tostring(L, 2), "meta") == 0) {
    lua_getiuservalue(L, 1, UV_META);
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

static int cursor_tostring(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  if (k->closed)
    lua_pushliteral(L, "osvi.Cursor (closed)");
  else
    lua_pushfstring(L, "osvi.Cursor (%p)", (void *)k);
  return 1;
}

int osvi_cursor_new(lua_State *L, int cidx, int fidx) {
  osvi_filters f;
  osvi_cursor *k;
  int query, cur;
  cidx = lua_absindex(L, cidx);
  osvi_query_check(L, fidx, OSVI_QUERY_ITERATE, &f);
  query = lua_gettop(L);
  k = lua_newuserdatauv(L, sizeof *k, UV_COUNT);
  memset(k, 0, sizeof *k);
  k->closed = 1;
  luaL_setmetatable(L, OSVI_CURSOR_MT);
  cur = lua_gettop(L);
  k->page = f.page > 0 ? f.page : 1;
  if (f.per_page > 0)
    k->per_page = f.per_page;
  else /* 100 when iterating; fewer when the limit is smaller */
    k->per_page = f.limit > 0 && f.limit < 100 ? f.limit : 100;
  k->remaining = f.limit;
  lua_pushvalue(L, cidx);
  set_uv(L, cur, UV_CLIENT);
  lua_pushvalue(L, query);
  set_uv(L, cur, UV_QUERY);
  k->closed = 0;
  k->last = f.limit == 0;
  /* cursor, nil, nil, cursor: the fourth value is the for loop's closing
  ** value, so break, return or an error in the body closes the cursor */
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, cur);
  return 4;
}

int osvi_cursor_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"next_page", cursor_next_page},
                                     {"poll", cursor_poll},
                                     {"close", cursor_close},
                                     {NULL, NULL}};
  static const luaL_Reg meta[] = {
      {"__index", cursor_index},
      {"__call", cursor_call},
      {"__gc", cursor_close},
      OSVI_REG_CLOSE(cursor_close) /* 5.4: __close */
      {"__tostring", cursor_tostring},
      {NULL, NULL}};
  if (luaL_newmetatable(L, OSVI_CURSOR_MT)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "methods");
  }
  lua_pop(L, 1);
  return 0;
}
