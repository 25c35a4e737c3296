/*
** osvi — what differs between Lua 5.4, 5.3, 5.1 and LuaJIT 2.1, in one
** place, so that the other files are written against the Lua 5.4 API. It
** needs nothing but the version's own lua.h and lauxlib.h.
**
**   5.4   nothing to do.
**   5.3   uservalues: one table per userdata stands in for 5.4's n
**         uservalues; no __close.
**   5.1,  as 5.3, and the rest of the 5.3 API that osvi uses, written here
**   LuaJIT  as static functions (so that no symbol of them is exported)
**         under names of their own (osvi_...), with macros that point the
**         5.3 names at them: lua_absindex, luaL_setfuncs, luaL_newlib,
**         luaL_setmetatable, luaL_testudata, luaL_tolstring, lua_rawlen,
**         lua_rawgetp and lua_rawsetp, the types that lua_getfield,
**         lua_rawget and lua_rawgeti return, the strings that
**         lua_pushstring and lua_pushlstring return, LUA_OK; integers
**         (numbers are doubles: an integer is an integral number, and
**         lua_isinteger says so only within 2^53, where a double is
**         exact); "%I" in lua_pushfstring. LuaJIT 2.1 has some of these
**         (luaL_setfuncs, luaL_testudata, lua_tointegerx...): the macros
**         replace them too, so that both behave as 5.3 does. Buffers
**         (luaL_Buffer) are the version's own: osvi uses them as the 5.4
**         manual allows, which 5.1's allow too.
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
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifndef LUA_OK
#define LUA_OK 0
#endif

/* An index that stays valid when the stack changes (pseudo-indices, such as
** LUA_REGISTRYINDEX, already are). */
static inline int osvi_absindex(lua_State *L, int idx) {
  return (idx > 0 || idx <= LUA_REGISTRYINDEX) ? idx : lua_gettop(L) + idx + 1;
}
#define lua_absindex osvi_absindex

#define lua_rawlen(L, idx) lua_objlen((L), (idx))

/* 5.3's pushers return the string they push; 5.1's return nothing. (The
** function is defined before the macro: it calls the version's own.
** lua_pushliteral goes through lua_pushlstring.) */
static inline const char *osvi_pushlstring(lua_State *L, const char *s,
                                           size_t len) {
  lua_pushlstring(L, s, len);
  return lua_tostring(L, -1);
}
static inline const char *osvi_pushstring(lua_State *L, const char *s) {
  lua_pushstring(L, s); /* NULL pushes nil, as in 5.3 */
  return s != NULL ? lua_tostring(L, -1) : NULL;
}
#define lua_pushlstring osvi_pushlstring
#define lua_pushstring osvi_pushstring

/* 5.3's getters return the type of the value they push. (A macro does not
** expand itself again: the inner name is the version's function.) */
#define lua_getfield(L, idx, k) \
  (lua_getfield((L), (idx), (k)), lua_type((L), -1))
#define lua_rawget(L, idx) (lua_rawget((L), (idx)), lua_type((L), -1))
#define lua_rawgeti(L, idx, n) (lua_rawgeti((L), (idx), (n)), lua_type((L), -1))

/* t[p] with p a light userdata, as 5.3's: get pushes it, set pops it. The
** pointer is only a key, never written through: its const is dropped by
** copying it (5.1 pushes a void *). */
static inline void osvi_pushkey(lua_State *L, const void *p) {
  void *key;
  memcpy(&key, &p, sizeof key);
  lua_pushlightuserdata(L, key);
}
static inline int osvi_rawgetp(lua_State *L, int idx, const void *p) {
  idx = lua_absindex(L, idx);
  osvi_pushkey(L, p);
  return lua_rawget(L, idx);
}
static inline void osvi_rawsetp(lua_State *L, int idx, const void *p) {
  idx = lua_absindex(L, idx);
  osvi_pushkey(L, p);
  lua_insert(L, -2);
  lua_rawset(L, idx);
}
#define lua_rawgetp osvi_rawgetp
#define lua_rawsetp osvi_rawsetp

/* Sets the functions of l (up to its {NULL, NULL}) into the table below
** nup upvalues, each a closure over those upvalues, which it pops. */
static inline void osvi_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  int i;
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name != NULL; l++) {
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
#undef luaL_setfuncs
#define luaL_setfuncs osvi_setfuncs

#undef luaL_newlib
#define luaL_newlib(L, l)                                          \
  (lua_createtable((L), 0, (int)(sizeof(l) / sizeof((l)[0]) - 1)), \
   luaL_setfuncs((L), (l), 0))

static inline void osvi_setmetatable(lua_State *L, const char *tname) {
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}
#undef luaL_setmetatable
#define luaL_setmetatable osvi_setmetatable

/* The userdata at ud if its metatable is tname's, else NULL. */
static inline void *osvi_testudata(lua_State *L, int ud, const char *tname) {
  void *p = lua_touserdata(L, ud);
  int same;
  if (p == NULL || !lua_getmetatable(L, ud)) return NULL;
  luaL_getmetatable(L, tname);
  same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same ? p : NULL;
}
#undef luaL_testudata
#define luaL_testudata osvi_testudata

/* Pushes what tostring() would give for the value at idx, and returns it:
** its __tostring, else the value itself for strings and numbers (a number
** as this version prints it), else "nil", "true", "false" or the type and
** address. */
static inline const char *osvi_tolstring(lua_State *L, int idx, size_t *len) {
  idx = lua_absindex(L, idx);
  if (luaL_callmeta(L, idx, "__tostring")) {
    if (!lua_isstring(L, -1))
      luaL_error(L, "'__tostring' must return a string");
  } else {
    switch (lua_type(L, idx)) {
      case LUA_TNUMBER:
      case LUA_TSTRING: lua_pushvalue(L, idx); break;
      case LUA_TBOOLEAN:
        lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
        break;
      case LUA_TNIL: lua_pushliteral(L, "nil"); break;
      default:
        lua_pushfstring(L, "%s: %p", luaL_typename(L, idx),
                        lua_topointer(L, idx));
        break;
    }
  }
  return lua_tolstring(L, -1, len);
}
#define luaL_tolstring osvi_tolstring
#endif /* 5.1 */

/* __close is registered only where there are to-be-closed variables */
#if LUA_VERSION_NUM >= 504
#define OSVI_REG_CLOSE(fn) {"__close", fn},
#else
#define OSVI_REG_CLOSE(fn)
#endif

#if LUA_VERSION_NUM < 504
/* The one value a userdata carries: 5.3's uservalue, 5.1's environment. */
#if LUA_VERSION_NUM == 501
#define osvi_getuservalue(L, idx) lua_getfenv((L), (idx))
#define osvi_setuservalue(L, idx) lua_setfenv((L), (idx))
#else
#define osvi_getuservalue(L, idx) lua_getuservalue((L), (idx))
#define osvi_setuservalue(L, idx) lua_setuservalue((L), (idx))
#endif

/* 5.4's n uservalues: a table of n slots as the single uservalue (5.3) or
** environment (5.1). With n = 0 no table is set, and none may be read. */
static inline void *osvi_newuserdatauv(lua_State *L, size_t size, int n) {
  void *p = lua_newuserdata(L, size);
  if (n > 0) {
    lua_createtable(L, n, 0);
    (void)osvi_setuservalue(L, -2);
  }
  return p;
}

/* Pushes uservalue n (nil when there is none) and returns its type. */
static inline int osvi_getiuservalue(lua_State *L, int idx, int n) {
  idx = lua_absindex(L, idx);
  osvi_getuservalue(L, idx);
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
  osvi_getuservalue(L, idx);
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
** integer exactly: beyond, neighbouring integers are one number. */
static inline int osvi_isinteger(lua_State *L, int idx) {
  lua_Number x;
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  x = lua_tonumber(L, idx);
  return x > -OSVI_EXACT && x < OSVI_EXACT && x == (lua_Number)(int64_t)x;
}
#undef lua_isinteger
#define lua_isinteger osvi_isinteger

/* Range-checked like 5.3's: a number out of range is not converted (a
** plain cast would be undefined). */
#undef lua_numbertointeger
#define lua_numbertointeger(n, p)                                      \
  ((n) >= (lua_Number)PTRDIFF_MIN && (n) < -(lua_Number)PTRDIFF_MIN && \
   (*(p) = (lua_Integer)(n), 1))

/* 5.3's: the integer value of a number, or of a string that is one, when it
** has one (no fraction, in range), with *ok saying whether it had. LuaJIT's
** own truncates a fraction. */
static inline lua_Integer osvi_tointegerx(lua_State *L, int idx, int *ok) {
  lua_Integer n = 0;
  int is = 0;
  if (lua_isnumber(L, idx)) {
    lua_Number x = lua_tonumber(L, idx);
    is = lua_numbertointeger(x, &n) && (lua_Number)n == x;
  }
  if (ok != NULL) *ok = is;
  return is ? n : 0;
}
#undef lua_tointegerx
#define lua_tointegerx osvi_tointegerx

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
