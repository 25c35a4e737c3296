/*
** osvi — what differs between Lua 5.4, 5.3, 5.1 and LuaJIT 2.1, in one
** place, so that the other files are written against the Lua 5.4 API.
**
**   5.4   nothing to do.
**   5.3   uservalues: one table per userdata stands in for 5.4's n
**         uservalues; no __close.
**   5.1,  as 5.3, plus Debian's lua-compat53 (compat-5.3.h, its .c included
**   LuaJIT  with static functions, so no symbol of it is exported) for
**         lua_absindex, luaL_setfuncs, luaL_newlib, luaL_setmetatable,
**         luaL_tolstring, lua_rawgetp/rawsetp, lua_rawlen, lua_getfield's
**         type, LUA_OK, ..., and below: integers (numbers are doubles: an
**         integer is an integral number within 2^53, exact in a double),
**         and "%I" in lua_pushfstring.
*/
#ifndef OSVI_COMPAT_H
#define OSVI_COMPAT_H

#include "lua.h"
#include "lauxlib.h"

#if !defined(LUA_VERSION_NUM) ||                         \
    (LUA_VERSION_NUM != 501 && LUA_VERSION_NUM != 503 && \
     LUA_VERSION_NUM != 504)
#error "osvi needs Lua 5.4, 5.3, 5.1 or LuaJIT 2.1"
#endif

#if LUA_VERSION_NUM == 501
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "compat-5.3.h"
#endif

/* __close is registered only where there are to-be-closed variables */
#if LUA_VERSION_NUM >= 504
#define OSVI_REG_CLOSE(fn) {"__close", fn},
#else
#define OSVI_REG_CLOSE(fn)
#endif

#if LUA_VERSION_NUM < 504
/* 5.4's n uservalues: a table of n slots as the single uservalue (5.3) or
** environment (5.1). With n = 0 no table is set, and none may be read. */
static inline void *osvi_newuserdatauv(lua_State *L, size_t size, int n) {
  void *p = lua_newuserdata(L, size);
  if (n > 0) {
    lua_createtable(L, n, 0);
    lua_setuservalue(L, -2);
  }
  return p;
}

/* Pushes uservalue n (nil when there is none) and returns its type. */
static inline int osvi_getiuservalue(lua_State *L, int idx, int n) {
  idx = lua_absindex(L, idx);
  lua_getuservalue(L, idx);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return LUA_TNONE;
  }
  lua_rawgeti(L, -1, n);
  lua_remove(L, -2);
  return lua_type(L, -1);
}

/* Pops a value into uservalue n; returns 0 when the userdata has none. */
static inline int osvi_setiuservalue(lua_State *L, int idx, int n) {
  idx = lua_absindex(L, idx);
  lua_getuservalue(L, idx);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 2);
    return 0;
  }
  lua_insert(L, -2);
  lua_rawseti(L, -2, n);
  lua_pop(L, 1);
  return 1;
}

#define lua_newuserdatauv osvi_newuserdatauv
#define lua_getiuservalue osvi_getiuservalue
#define lua_setiuservalue osvi_setiuservalue
#endif /* < 5.4 */

#if LUA_VERSION_NUM == 501
#if !defined(LUAI_UACINT)
#define LUAI_UACINT lua_Integer
#endif

#define OSVI_EXACT 9007199254740992.0 /* 2^53 */

/* An integer is an integral number within 2^53, where a double holds every
** integer exactly (compat53's version has no such bound). */
static inline int osvi_isinteger(lua_State *L, int idx) {
  lua_Number x;
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  x = lua_tonumber(L, idx);
  return x > -OSVI_EXACT && x < OSVI_EXACT && x == (lua_Number)(int64_t)x;
}
#undef lua_isinteger
#define lua_isinteger osvi_isinteger

/* Range-checked like 5.3's (compat53's casts whatever it is given). */
#undef lua_numbertointeger
#define lua_numbertointeger(n, p)                                      \
  ((n) >= (lua_Number)PTRDIFF_MIN && (n) < -(lua_Number)PTRDIFF_MIN && \
   (*(p) = (lua_Integer)(n), 1))

/* 5.3's: a number with no integer value is an error, not truncated. */
static inline lua_Integer osvi_checkinteger(lua_State *L, int arg) {
  int ok;
  lua_Integer n = lua_tointegerx(L, arg, &ok);
  if (!ok)
    luaL_argerror(L, arg,
                  lua_isnumber(L, arg)
                      ? "number has no integer representation"
                      : lua_pushfstring(L, "number expected, got %s",
                                        luaL_typename(L, arg)));
  return n;
}
#undef luaL_checkinteger
#undef luaL_optinteger
#define luaL_checkinteger osvi_checkinteger
#define luaL_optinteger(L, arg, def)                \
  (lua_isnoneornil((L), (arg)) ? (lua_Integer)(def) \
                               : osvi_checkinteger((L), (arg)))

/* lua_pushfstring with 5.3's "%I" (a LUAI_UACINT) besides %s %d %f %p %c
** %%, one piece at a time with the version's own lua_pushfstring. */
static inline const char *osvi_pushvfstring(lua_State *L, const char *fmt,
                                            va_list ap) {
  const char *e;
  int n = 0;
  while ((e = strchr(fmt, '%')) != NULL && e[1] != '\0') {
    luaL_checkstack(L, 3, "format");
    lua_pushlstring(L, fmt, (size_t)(e - fmt));
    /* ap comes from the caller's va_start: clang-analyzer 14 loses track of
    ** a va_list handed down a call (llvm/llvm-project#40656) */
    /* NOLINTBEGIN(clang-analyzer-valist.Uninitialized) */
    switch (e[1]) {
      case 'I': {
        char buf[32];
        (void)snprintf(buf, sizeof buf, "%lld",
                       (long long)va_arg(ap, LUAI_UACINT));
        lua_pushstring(L, buf);
        break;
      }
      case 's': {
        const char *s = va_arg(ap, const char *);
        lua_pushstring(L, s != NULL ? s : "(null)");
        break;
      }
      case 'd': lua_pushfstring(L, "%d", va_arg(ap, int)); break;
      case 'c': lua_pushfstring(L, "%c", va_arg(ap, int)); break;
      case 'f': lua_pushfstring(L, "%f", va_arg(ap, double)); break;
      case 'p': lua_pushfstring(L, "%p", va_arg(ap, void *)); break;
      default: lua_pushlstring(L, e + 1, 1); break; /* %% */
    }
    /* NOLINTEND(clang-analyzer-valist.Uninitialized) */
    n += 2;
    fmt = e + 2;
  }
  lua_pushstring(L, fmt);
  lua_concat(L, n + 1);
  return lua_tostring(L, -1);
}

static inline const char *osvi_pushfstring(lua_State *L, const char *fmt, ...) {
  const char *s;
  va_list ap;
  va_start(ap, fmt);
  s = osvi_pushvfstring(L, fmt, ap);
  va_end(ap);
  return s;
}
#define lua_pushvfstring osvi_pushvfstring
#define lua_pushfstring osvi_pushfstring
#endif /* 5.1 */

#endif
