/*
** Error objects: plain tables with a shared metatable, so that a script can
** branch on err.kind and a person can read tostring(err).
*/
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "osvi.h"

static const char *const kind_names[] = {
#define OSVI_KIND_NAME(name, str) str,
    OSVI_ERROR_KINDS(OSVI_KIND_NAME)
#undef OSVI_KIND_NAME
};

/*
** Pushes "chunk:line:" of the innermost Lua function on the stack, or
** nothing (returns 0) when no Lua function is calling (a C host). This is
** luaL_where(L, 1) when the user's code called the C function that raises
** (osvi.new{...}); a check made deeper, in a C function that another one
** called (client:page's protected run, the default client made by
** osvi.calls, pcall(osvi.new, ...)), has C frames in between: they are
** skipped, so the position is always the user's line.
*/
static int push_where(lua_State *L) {
  lua_Debug ar;
  int level;
  for (level = 1; level < 64 && lua_getstack(L, level, &ar); level++) {
    if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
      lua_pushfstring(L, "%s:%d:", ar.short_src, ar.currentline);
      return 1;
    }
  }
  return 0;
}

static void push_error_v(lua_State *L, osvi_kind kind, long status,
                         const char *fmt, va_list ap) {
  lua_createtable(L, 0, 6);
  lua_pushstring(L, kind_names[kind]);
  lua_setfield(L, -2, "kind");
  if (status > 0) {
    lua_pushinteger(L, (lua_Integer)status);
    lua_setfield(L, -2, "status");
  }
  lua_pushvfstring(L, fmt, ap);
  lua_setfield(L, -2, "message");
  /* a usage error is the caller's mistake: where the call was made, so
  ** that an uncaught one (printed through __tostring, with no traceback)
  ** points at the line to fix */
  if (kind == OSVI_E_USAGE && push_where(L)) lua_setfield(L, -2, "where");
  luaL_setmetatable(L, OSVI_ERROR_MT);
}

void osvi_error_push(lua_State *L, osvi_kind kind, long status, const char *fmt,
                     ...) {
  va_list ap;
  va_start(ap, fmt);
  push_error_v(L, kind, status, fmt, ap);
  va_end(ap);
}

void osvi_error_set(lua_State *L, const char *name) {
  lua_setfield(L, -2, name);
}

void osvi_error_attempts(lua_State *L, int attempts, double elapsed) {
  lua_pushinteger(L, attempts);
  osvi_error_set(L, "attempts");
  lua_pushnumber(L, elapsed);
  osvi_error_set(L, "elapsed");
  if (attempts > 1) {
    char took[64];
    (void)snprintf(took, sizeof took, "%d attempts over %.2f s", attempts,
                   elapsed);
    lua_getfield(L, -1, "message"); /* err,message */
    lua_pushfstring(L, "%s (%s)", lua_tostring(L, -1), took);
    lua_remove(L, -2);
    osvi_error_set(L, "message");
  }
}

int osvi_usage_error(lua_State *L, const char *key, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_error_v(L, OSVI_E_USAGE, 0, fmt, ap);
  va_end(ap);
  if (key != NULL) {
    lua_pushstring(L, key);
    osvi_error_set(L, "key");
  }
  return lua_error(L);
}

int osvi_usage_error_at(lua_State *L, int key, const char *fmt, ...) {
  va_list ap;
  key = lua_absindex(L, key);
  va_start(ap, fmt);
  push_error_v(L, OSVI_E_USAGE, 0, fmt, ap);
  va_end(ap);
  lua_pushvalue(L, key);
  osvi_error_set(L, "key");
  return lua_error(L);
}

/*
** __tostring: "osvi: rate_limited (HTTP 429): too many requests
** [per_page is invalid] (retry after 30 s)"; a usage error starts with the
** caller's position, as Lua's own errors do: "report.lua:12: osvi: usage:
** unknown filter 'stauts' (did you mean 'status'?)"
*/
static int error_tostring(lua_State *L) {
  luaL_Buffer b;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "status");
  lua_getfield(L, 1, "message");
  lua_getfield(L, 1, "errors");
  lua_getfield(L, 1, "retry_after");
  lua_getfield(L, 1, "where"); /* kind,status,message,errors,retry,where */
  luaL_buffinit(L, &b);
  if (lua_type(L, 7) == LUA_TSTRING) {
    luaL_addstring(&b, lua_tostring(L, 7));
    luaL_addchar(&b, ' ');
  }
  luaL_addstring(&b, "osvi: ");
  luaL_addstring(&b, lua_isstring(L, 2) ? lua_tostring(L, 2) : "error");
  if (lua_isinteger(L, 3)) {
    lua_pushfstring(L, " (HTTP %d)", (int)lua_tointeger(L, 3));
    luaL_addvalue(&b);
  }
  if (lua_isstring(L, 4)) {
    luaL_addstring(&b, ": ");
    luaL_addstring(&b, lua_tostring(L, 4));
  }
  if (lua_istable(L, 5)) {
    lua_Integer i, n = (lua_Integer)lua_rawlen(L, 5);
    luaL_addstring(&b, " [");
    for (i = 1; i <= n; i++) {
      if (i > 1) luaL_addstring(&b, "; ");
      lua_rawgeti(L, 5, i);
      if (lua_isstring(L, -1)) {
        luaL_addvalue(&b);
      } else {
        lua_pop(L, 1);
        luaL_addstring(&b, "?");
      }
    }
    luaL_addstring(&b, "]");
  }
  if (lua_isnumber(L, 6)) {
    lua_pushfstring(L, " (retry after %d s)", (int)lua_tointeger(L, 6));
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  return 1;
}

int osvi_error_open(lua_State *L) {
  if (luaL_newmetatable(L, OSVI_ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "osvi.Error");
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
  return 0;
}
