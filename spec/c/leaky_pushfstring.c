/*
** spec/c/leaky_pushfstring.c — for the self-test of spec/c/oom.c only.
**
** check.mk builds a "mutant" osvi.so from the unchanged sources with
** -Dlua_pushfstring=osvi_check_leaky_pushfstring and this file linked in.
** The wrapper has the classic bug of C code under Lua: it holds malloc'd
** memory across a Lua API call that can raise. When lua_pushvfstring raises
** "not enough memory" the longjmp skips the free and the block leaks, so the
** OOM check must fail against that build. (check.mk compiles this file with
** -O0 so that the unused malloc/free pair is not optimised away.)
*/
#include <stdarg.h>
#include <stdlib.h>

#include "lua.h"

const char *osvi_check_leaky_pushfstring(lua_State *L, const char *fmt, ...);

const char *osvi_check_leaky_pushfstring(lua_State *L, const char *fmt, ...) {
  char *scratch = malloc(24); /* lost if lua_pushvfstring raises */
  const char *s;
  va_list ap;
  va_start(ap, fmt);
  s = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  free(scratch);
  return s;
}
