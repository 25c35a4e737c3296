/*
** A minimal Lua 5.4 interpreter for the sanitizer run of `make check`:
**   luahost SCRIPT [ARGS...]
** runs SCRIPT like `lua5.4 SCRIPT ARGS...` (the global `arg` included), so
** that busted's runner can be started in a process that has AddressSanitizer
** linked in. Only this process is instrumented: the shell commands the specs
** start are not, so their own exit-time reports cannot disturb the run.
** Ctrl-C (SIGINT) raises "interrupted!" in the running Lua code, as lua5.4
** does, for the scripts that handle it (osvi-calls).
*/
#include <signal.h>
#include <stdio.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

static lua_State *running;

/* From lua.c: a hook that raises the interruption once Lua code runs on. */
static void stop(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void on_sigint(int sig) {
  signal(sig, SIG_DFL); /* a second Ctrl-C ends the process */
  lua_sethook(running, stop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg =
        lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L;
  int i, status;
  if (argc < 2) {
    fprintf(stderr, "usage: %s SCRIPT [ARGS...]\n", argv[0]);
    return 2;
  }
  L = luaL_newstate();
  if (L == NULL) return 1;
  luaL_openlibs(L);
  /* arg[-1] = this program, arg[0] = the script, arg[1..] = its arguments */
  lua_createtable(L, argc, 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, traceback);
  status = luaL_loadfile(L, argv[1]);
  if (status == LUA_OK) {
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    running = L;
    signal(SIGINT, on_sigint);
    status = lua_pcall(L, argc - 2, 0, 1);
    signal(SIGINT, SIG_DFL);
  }
  if (status != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
