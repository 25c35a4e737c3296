/*
** The cursor: a lazy page iterator, the Lua face of a paging core (core.c)
** driven over libcurl (transport.c). With prefetch = 0 it asks for page k+1
** only when page k is used up, on the client's own handle; with prefetch = n
** the core keeps n pages on their way in a pool of transfers while the
** caller works. The cursor is its own iterator (__call) and its own closing
** value, so `for call in client:calls(f) do ... end` closes it on break or
** error.
**
** It owns its core and, while it iterates with a pool, the pool; it holds
** its client (never freed under it, but maybe closed: then the next step
** raises). A step runs Lua (decoding), and so maybe finalisers: one that
** comes back to this cursor gets an error (use) or a deferred close, and
** the step itself runs in protected mode so that the cursor is never left
** marked busy.
*/
#include <string.h>
#include <unistd.h>

#include "osvi.h"

enum { UV_CLIENT = 1, UV_CORE, UV_DATA, UV_POOL, UV_COUNT = UV_POOL };

typedef struct osvi_cursor {
  lua_Integer index;         /* calls of the current data handed out */
  lua_Integer count;         /* calls in the current data */
  osvi_pool *pool;           /* = uservalue UV_POOL while it is held */
  const osvi_client *client; /* = uservalue UV_CLIENT, held for good */
  int prefetch; /* pages ahead: with 0, the client's handle is used */
  int busy;     /* inside a step */
  int orphan;   /* its client was closed: every step raises */
  int closed;
} osvi_cursor;

static osvi_cursor *check_cursor(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, OSVI_CURSOR_MT);
}

/* Gives the pool back to the client (stopping its transfers) and lets go
** of everything. Deferred while a step runs. Safe twice. */
static int cursor_close(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  k->closed = 1;
  if (k->busy) return 0; /* the step that runs finishes the job */
  k->index = k->count = 0;
  if (lua_getiuservalue(L, 1, UV_POOL) == LUA_TUSERDATA) {
    lua_getiuservalue(L, 1, UV_CLIENT);
    osvi_client_give_pool(L, -1, -2);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  k->pool = NULL;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, UV_POOL);
  lua_pushnil(L);
  lua_setiuservalue(L, 1, UV_DATA);
  return 0;
}

/* The client, checked (after fork(): renewed). Pushes it: [-0, +1] */
static osvi_client *step_client(lua_State *L, int cur) {
  lua_getiuservalue(L, cur, UV_CLIENT);
  return osvi_client_check(L, -1); /* raises if closed meanwhile */
}

/* The pool to use, made or taken from the client on first use; one
** inherited across fork() is dropped (what it had in flight is asked for
** again). Leaves the stack as it was. */
static osvi_pool *step_pool(lua_State *L, int cur, osvi_cursor *k, int client,
                            int core) {
  if (k->pool != NULL && osvi_pool_finalised(k->pool))
    osvi_usage_error(L, NULL,
                     "the cursor was collected (used from a finaliser after "
                     "the garbage collector took its transfers)");
  if (k->pool != NULL && !osvi_pool_usable(k->pool)) {
    /* made by the process this one was forked from: dropped, and what it
    ** had in flight is asked for again on a pool of this process */
    k->pool = NULL;
    lua_pushnil(L);
    lua_setiuservalue(L, cur, UV_POOL);
    osvi_core_lost(osvi_core_check(L, core));
  }
  if (k->pool == NULL) {
    /* the pages ahead and a re-read of the head */
    int n = (k->prefetch > 0 ? k->prefetch : 1) + 1;
    k->pool = osvi_client_take_pool(L, client, n);
    lua_setiuservalue(L, cur, UV_POOL);
  }
  return k->pool;
}

/*
** One step, in protected mode (a C function of its own): cursor at 1, mode
** at 2 (0 load and wait, 1 load without waiting, 2 pump only). Pushes what
** osvi_core_next_page returned as an integer, above the page or error.
*/
static int step_protected(lua_State *L) {
  osvi_cursor *k = lua_touserdata(L, 1);
  int mode = (int)lua_tointeger(L, 2), client, core, res;
  osvi_client *c;
  osvi_link link;
  lua_settop(L, 2);
  c = step_client(L, 1);
  client = lua_gettop(L);
  /* the base URL as a Lua string on this stack: a finaliser that closes
  ** the client during the step frees the client's copy */
  link.base_url = lua_pushstring(L, c->base_url);
  link.log = c->log;
  lua_getiuservalue(L, 1, UV_CORE);
  core = lua_gettop(L);
  if (mode == 2) {
    if (k->pool != NULL && osvi_pool_usable(k->pool))
      osvi_pool_pump(L, core, k->pool, &link);
    return 0;
  }
  if (mode == 3) { /* the pool a host will wait on */
    step_pool(L, 1, k, client, core);
    return 0;
  }
  /* once a cursor has transfers of its own (poll(), pollfd()), they carry
  ** every step: what is in flight there is not the easy handle's to ask */
  if (k->prefetch > 0 || mode == 1 || k->pool != NULL) {
    osvi_pool *p = step_pool(L, 1, k, client, core);
    res = osvi_pool_run(L, core, p, &link, mode == 0);
  } else {
    res = osvi_easy_run(L, core, &c->http, &c->closed, &link);
  }
  lua_pushinteger(L, res);
  return lua_gettop(L) - core; /* the page or error, and res */
}

/*
** Runs a step (see step_protected). Returns 1 with the page pushed and made
** current, 0 at the end (the cursor is then closed), or -1 when the page is
** not in yet (mode 1). Raises the error of a failed step.
*/
static int step(lua_State *L, osvi_cursor *k, int mode) {
  int top = lua_gettop(L), status, res;
  /* a cursor whose client was closed raises, every time: ending as if the
  ** listing were over would make a report short in silence */
  if (k->orphan || (!k->closed && k->client->closed)) {
    if (!k->orphan && !k->busy) {
      k->orphan = 1;
      cursor_close(L); /* lets go of the transfers */
    }
    osvi_usage_error(L, NULL, "the client is closed");
  }
  if (k->closed) return 0;
  if (k->busy)
    osvi_usage_error(L, NULL,
                     "the cursor is in the middle of a step (used again "
                     "from a finaliser?)");
  k->busy = 1;
  lua_pushcfunction(L, step_protected);
  lua_pushvalue(L, 1);
  lua_pushinteger(L, mode);
  status = lua_pcall(L, 2, LUA_MULTRET, 0);
  k->busy = 0;
  if (status != LUA_OK) {
    osvi_client *c;
    lua_getiuservalue(L, 1, UV_CLIENT);
    c = luaL_testudata(L, -1, OSVI_CLIENT_MT);
    if (c != NULL) c->http.busy = 0; /* an error while a body was copied */
    lua_pop(L, 1);
    if (k->closed) cursor_close(L); /* closed meanwhile: let go now */
    return lua_error(L);
  }
  if (mode >= 2) {
    lua_settop(L, top);
    return 0;
  }
  res = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  if (k->client->closed) k->orphan = 1; /* closed by a finaliser meanwhile */
  if (k->closed) { /* closed by a finaliser during the step */
    lua_settop(L, top);
    cursor_close(L);
    return 0;
  }
  switch (res) {
    case OSVI_CORE_PAGE:
      lua_getfield(L, -1, "data");
      k->count = (lua_Integer)lua_rawlen(L, -1);
      k->index = 0;
      lua_setiuservalue(L, 1, UV_DATA);
      return 1;
    case OSVI_CORE_WAIT: lua_settop(L, top); return -1;
    case OSVI_CORE_DONE:
      lua_settop(L, top);
      cursor_close(L);
      return 0;
    default: return lua_error(L); /* the error object */
  }
}

/* for-loop step: the next call, or nil at the end. Raises on failure. */
static int cursor_call(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  lua_settop(L, 1);
  for (;;) {
    if (k->closed && !k->orphan) return 0;
    if (k->index < k->count && !k->busy && !k->client->closed) {
      lua_getiuservalue(L, 1, UV_DATA);
      lua_rawgeti(L, -1, ++k->index); /* cursor, data, call */
      /* now and then, move the prefetched transfers on (connects, sends,
      ** receives) while the caller works */
      if (k->pool != NULL && (k->index & 31) == 0) {
        lua_replace(L, 2); /* cursor, call */
        step(L, k, 2);
      }
      return 1;
    }
    if (step(L, k, 0) == 0) return 0;
    lua_settop(L, 1);
  }
}

/* cur:next_page() -> {data, meta, fetch} or nil after the last page. */
static int cursor_next_page(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  lua_settop(L, 1);
  if (step(L, k, 0) == 0) return 0;
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
  int r;
  lua_settop(L, 1);
  r = step(L, k, 1);
  if (r == 0) return 0;
  if (r < 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  k->index = k->count;
  return 1;
}

/*
** A host's event loop waits on a cursor as cqueues' pollable protocol has
** it: cqueues.poll(cur) works as it is; luv: uv.new_poll(cur:pollfd()) and a
** timer of cur:timeout(). After a wake-up, cur:poll() moves things on.
**   cur:pollfd()  a descriptor, readable when a transfer can move on
**   cur:events()  "r"
**   cur:timeout() seconds to wait at most (0: call poll() now), or nil
** All three make the cursor's transfers if it has none yet. After the last
** page (or close), pollfd() and timeout() are nil: poll() returns nil.
*/
static int cursor_pollfd(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  int fd;
  lua_settop(L, 1);
  if (k->closed && !k->orphan) return 0;
  if (k->pool == NULL) step(L, k, 3);
  fd = k->pool != NULL ? osvi_pool_fd(k->pool) : -1;
  if (fd < 0) return 0;
  lua_pushinteger(L, fd);
  return 1;
}

static int cursor_events(lua_State *L) {
  check_cursor(L, 1);
  lua_pushliteral(L, "r");
  return 1;
}

static int cursor_timeout(lua_State *L) {
  osvi_cursor *k = check_cursor(L, 1);
  const osvi_core *c;
  double now = osvi_now(), t, u;
  lua_settop(L, 1);
  if (k->orphan || k->busy) { /* poll() will say what is wrong */
    lua_pushnumber(L, 0);
    return 1;
  }
  if (k->closed) return 0;
  if (k->pool == NULL || !osvi_pool_usable(k->pool) || k->index < k->count) {
    lua_pushnumber(L, 0);
    return 1;
  }
  lua_getiuservalue(L, 1, UV_CORE);
  c = lua_touserdata(L, -1);
  if (osvi_core_ready(c)) {
    lua_pushnumber(L, 0);
    return 1;
  }
  t = osvi_core_timeout(c, now); /* a retry due, or a request to send */
  if (t == 0 && osvi_pool_running(k->pool) >= osvi_pool_size(k->pool))
    t = -1;                            /* it waits for a transfer to finish */
  u = osvi_pool_timeout(k->pool, now); /* libcurl's own deadline */
  if (u >= 0 && (t < 0 || u < t)) t = u;
  if (t < 0) return 0; /* the descriptor alone */
  lua_pushnumber(L, t);
  return 1;
}

static int cursor_index(lua_State *L) {
  check_cursor(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) {
    const char *key = lua_tostring(L, 2);
    if (strcmp(key, "meta") == 0 || strcmp(key, "stats") == 0) {
      if (lua_getiuservalue(L, 1, UV_CORE) != LUA_TUSERDATA) return 1;
      if (key[0] == 'm')
        osvi_core_push_meta(L, -1);
      else
        osvi_core_push_stats(L, lua_touserdata(L, -1));
      return 1;
    }
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
  osvi_client *c;
  osvi_core_policy p;
  osvi_cursor *k;
  int core, cur;
  cidx = lua_absindex(L, cidx);
  fidx = lua_absindex(L, fidx);
  c = osvi_client_check(L, cidx);
  osvi_client_policy(c, &p);
  osvi_core_new(L, fidx, OSVI_CORE_LIST, &p);
  core = lua_gettop(L);
  k = lua_newuserdatauv(L, sizeof *k, UV_COUNT);
  memset(k, 0, sizeof *k);
  k->closed = 1;
  luaL_setmetatable(L, OSVI_CURSOR_MT);
  cur = lua_gettop(L);
  k->prefetch = c->prefetch;
  k->client = c;
  lua_pushvalue(L, cidx);
  lua_setiuservalue(L, cur, UV_CLIENT);
  lua_pushvalue(L, core);
  lua_setiuservalue(L, cur, UV_CORE);
  k->closed = 0;
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
                                     {"pollfd", cursor_pollfd},
                                     {"events", cursor_events},
                                     {"timeout", cursor_timeout},
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
