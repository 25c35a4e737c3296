/*
** osvi — Lua client for the OSVI "List calls" API (GET /v1/calls).
** Entry point: builds the module table from the parts in the other files.
**
**   osvi.new{...}        a client             (client.c)
**   client:calls(f)      a lazy page cursor   (cursor.c over core.c)
**   osvi.core(f)         the paging core      (core.c), for Lua transports
**   client:page(f)       one page             (client.c, http.c, decode.c)
**   osvi.query(f)        the query string     (query.c)
**   osvi.time(s)         ISO-8601 -> epoch    (time.c)
*/
#include "osvi.h"

#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif
LUALIB_API int luaopen_osvi(lua_State *L);
#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

LUALIB_API int luaopen_osvi(lua_State *L) {
  osvi_http_global_init();
  osvi_error_open(L);
  osvi_decode_open(L);
  osvi_cursor_open(L);
  osvi_pool_open(L);
  lua_newtable(L); /* the module */
  osvi_client_open(L);
  osvi_core_open(L);
  osvi_query_open(L);
  osvi_time_open(L);
  lua_pushliteral(L, "osvi " OSVI_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
