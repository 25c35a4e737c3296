/*
** Error objects: plain tables with a shared metatable, so that a script can
** branch on err.kind and a person can read tostring(err).
*/
#include <stdarg.h>
#include <string.h>

#include "osvi.h"

static const char *const kind_names[] = {
#define OSVI_KIND_NAME(name, str) str,
    OSVI_ERROR_KINDS(OSVI_KIND_NAME)
#undef OSVI_KIND_NAME
};

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
** [per_page is invalid] (retry after 30 s)"
*/
static int error_tostring(lua_State *L) {
  luaL_Buffer b;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "kind");
  lua_getfield(L, 1, "status");
  lua_getfield(L, 1, "message");
  lua_getfield(L, 1, "errors");
  lua_getfield(L, 1, "retry_after"); /* kind,status,message,errors,retry */
  luaL_buffinit(L, &b);
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
