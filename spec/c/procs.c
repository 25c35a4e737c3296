/*
** spec/c/procs.c — fork(), _exit(), waitpid() and kill() for Lua, for the
** fork specs of spec/lifetime_spec.lua. They use Debian's lua-posix where it
** loads; Debian 12 builds lua-posix for Lua 5.1 to 5.3 only, so under Lua 5.4
** the spec builds this file instead, into a temporary directory:
**
**   cc -std=c99 -shared -fPIC -I/usr/include/lua5.4 -o procs.so spec/c/procs.c
**
** and loads it with package.loadlib(path, "luaopen_osvi_spec_procs"). It
** uses only what Lua 5.1, 5.3, 5.4 and LuaJIT all have, so the same file
** builds against any of their headers. The module:
**
**   fork()             -> pid in the parent, 0 in the child; raises on failure
**   exit(code)         _exit(code): no atexit handlers, no stdio flush, no
**                      lua_close (the child must not finalize the parent's
**                      objects)
**   wait(pid, nohang)  -> 0 while the child runs (nohang), or
**                         pid, "exited", code / pid, "killed", signal
**   kill(pid, signal)  -> true, or nil and a message
**   getpid()           -> this process's pid
*/
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"

int luaopen_osvi_spec_procs(lua_State *L);

static int l_fork(lua_State *L) {
  pid_t pid = fork();
  if (pid < 0) return luaL_error(L, "fork: %s", strerror(errno));
  lua_pushinteger(L, (lua_Integer)pid);
  return 1;
}

static int l_exit(lua_State *L) {
  _exit((int)luaL_checkinteger(L, 1));
  return 0;
}

static int l_wait(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int options = lua_toboolean(L, 2) ? WNOHANG : 0;
  int status = 0;
  pid_t got;
  do {
    got = waitpid(pid, &status, options);
  } while (got < 0 && errno == EINTR);
  if (got < 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)got);
  if (got == 0) return 1;
  if (WIFEXITED(status)) {
    lua_pushliteral(L, "exited");
    lua_pushinteger(L, WEXITSTATUS(status));
  } else if (WIFSIGNALED(status)) {
    lua_pushliteral(L, "killed");
    lua_pushinteger(L, WTERMSIG(status));
  } else {
    lua_pushliteral(L, "stopped");
    lua_pushinteger(L, 0);
  }
  return 3;
}

static int l_kill(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = (int)luaL_optinteger(L, 2, SIGKILL);
  if (kill(pid, sig) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

int luaopen_osvi_spec_procs(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, l_fork);
  lua_setfield(L, -2, "fork");
  lua_pushcfunction(L, l_exit);
  lua_setfield(L, -2, "exit");
  lua_pushcfunction(L, l_wait);
  lua_setfield(L, -2, "wait");
  lua_pushcfunction(L, l_kill);
  lua_setfield(L, -2, "kill");
  lua_pushcfunction(L, l_getpid);
  lua_setfield(L, -2, "getpid");
  lua_pushinteger(L, SIGKILL);
  lua_setfield(L, -2, "SIGKILL");
  return 1;
}
