/*
** examples/embed/host.c: a game-loop host that embeds Lua 5.4 with osvi
** linked in statically, and lists calls from a periodic tick that must never
** block.
**
**   host [--url URL] [--token TOKEN] [--script PATH] [--per-page N]
**        [--prefetch N] [--tick-ms MS] [--bound-ms MS] [--max-seconds S]
**        [--blocking]
**
** The URL defaults to $OSVI_BASE_URL, the token to $OSVI_API_TOKEN, the
** script to tick.lua next to this program; --per-page (50) and --prefetch
** (osvi's default when not given) go to the script. Every --tick-ms (16) the
** loop calls the script's tick() and measures it: its wall time, its CPU
** time, and whether it slept in the kernel (a voluntary context switch: it
** waited for something). At the end it prints what it saw and exits with:
**   0  no tick stalled, and as many calls as meta.total_count
**   2  usage error
**   3  a tick stalled: it waited and took longer than --bound-ms (5), or its
**      own work took more CPU than that. A tick that is only late because
**      other processes had the CPU is counted apart: it did not wait.
**   4  the calls received do not match meta.total_count, or the listing did
**      not finish within --max-seconds (30)
**   5  a Lua error (osvi's failures included)
** --blocking tells the script to use cur:next_page() (which waits for the
** page) instead of cur:poll(): it must end with 3.
*/
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

/* From src/osvi.c, compiled into this program: no osvi.so is loaded. */
int luaopen_osvi(lua_State *L);

enum { EXIT_USAGE = 2, EXIT_STALL = 3, EXIT_COUNT = 4, EXIT_LUA = 5 };

typedef struct options {
  const char *url, *token, *script;
  long per_page, prefetch, tick_ms, max_seconds; /* prefetch -1: default */
  double bound_ms;
  int blocking;
} options;

static double clock_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double now_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

/* Times this thread gave up the CPU to wait (poll, read, sleep...), as
** opposed to being preempted. */
static long waits(void) {
  struct rusage ru;
  getrusage(RUSAGE_THREAD, &ru);
  return ru.ru_nvcsw;
}

/* Sleeps until the absolute monotonic time t (ms). */
static void sleep_until_ms(double t) {
  struct timespec ts;
  ts.tv_sec = (time_t)(t / 1e3);
  ts.tv_nsec = (long)((t - (double)ts.tv_sec * 1e3) * 1e6);
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
    ;
}

/* Message handler: a traceback, also for osvi's error objects (tables with
** a __tostring). */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)",
                            luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static long number_arg(const char *name, const char *s, long lo, long hi) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "host: %s wants an integer in %ld..%ld, not '%s'\n", name,
            lo, hi, s);
    exit(EXIT_USAGE);
  }
  return v;
}

static void parse_args(int argc, char **argv, options *o) {
  static char script[4096];
  const char *slash = strrchr(argv[0], '/');
  int i;
  o->url = getenv("OSVI_BASE_URL");
  o->token = getenv("OSVI_API_TOKEN");
  /* tick.lua next to the program */
  snprintf(script, sizeof script, "%.*stick.lua",
           slash ? (int)(slash - argv[0] + 1) : 0, argv[0]);
  o->script = script;
  o->per_page = 50;
  o->prefetch = -1;
  o->tick_ms = 16;
  o->bound_ms = 5;
  o->max_seconds = 30;
  o->blocking = 0;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--blocking") == 0) {
      o->blocking = 1;
      continue;
    }
    if (v == NULL) goto usage;
    i++;
    if (strcmp(a, "--url") == 0)
      o->url = v;
    else if (strcmp(a, "--token") == 0)
      o->token = v;
    else if (strcmp(a, "--script") == 0)
      o->script = v;
    else if (strcmp(a, "--per-page") == 0)
      o->per_page = number_arg(a, v, 1, 100);
    else if (strcmp(a, "--prefetch") == 0)
      o->prefetch = number_arg(a, v, 0, 16);
    else if (strcmp(a, "--tick-ms") == 0)
      o->tick_ms = number_arg(a, v, 1, 1000);
    else if (strcmp(a, "--bound-ms") == 0)
      o->bound_ms = (double)number_arg(a, v, 1, 1000);
    else if (strcmp(a, "--max-seconds") == 0)
      o->max_seconds = number_arg(a, v, 1, 3600);
    else
      goto usage;
  }
  if (o->url != NULL && o->token != NULL) return;
  fprintf(
      stderr,
      "host: give --url and --token (or OSVI_BASE_URL and OSVI_API_TOKEN)\n");
usage:
  fprintf(stderr,
          "usage: %s [--url URL] [--token TOKEN] [--script PATH] "
          "[--per-page N] [--prefetch N]\n  [--tick-ms MS] [--bound-ms MS] "
          "[--max-seconds S] [--blocking]\n",
          argv[0]);
  exit(EXIT_USAGE);
}

/* Calls the function below its nargs arguments at the top of the stack
** with nres results, under the traceback handler; on error prints it and
** exits. */
static void call(lua_State *L, int nargs, int nres) {
  int fn = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, fn);
  if (lua_pcall(L, nargs, nres, fn) != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    lua_close(L);
    exit(EXIT_LUA);
  }
  lua_remove(L, fn);
}

int main(int argc, char **argv) {
  options o;
  lua_State *L;
  double *took = NULL, next, start, max = 0, max_cpu = 0, p99;
  size_t ticks = 0, cap = 0, waited = 0, stalled = 0, late = 0;
  lua_Integer calls, pages, total, waiting;
  int done = 0, status = 0, script;

  parse_args(argc, argv, &o);
  L = luaL_newstate();
  if (L == NULL) return EXIT_LUA;
  luaL_openlibs(L);
  /* osvi into package.loaded (not a global: the 0), from this binary;
  ** luaopen_osvi itself does require "cjson" (the system's lua-cjson). */
  luaL_requiref(L, "osvi", luaopen_osvi, 0);
  lua_pop(L, 1);

  /* the script gets its settings as `...` and returns {tick, summary} */
  if (luaL_loadfile(L, o.script) != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    return EXIT_LUA;
  }
  lua_createtable(L, 0, 5);
  lua_pushstring(L, o.url);
  lua_setfield(L, -2, "url");
  lua_pushstring(L, o.token);
  lua_setfield(L, -2, "token");
  lua_pushinteger(L, o.per_page);
  lua_setfield(L, -2, "per_page");
  if (o.prefetch >= 0) {
    lua_pushinteger(L, o.prefetch);
    lua_setfield(L, -2, "prefetch");
  }
  lua_pushboolean(L, o.blocking);
  lua_setfield(L, -2, "blocking");
  call(L, 1, 1);
  script = lua_gettop(L);
  if (!lua_istable(L, script)) {
    fprintf(stderr, "host: %s did not return {tick = ..., summary = ...}\n",
            o.script);
    return EXIT_LUA;
  }

  /* the fixed-step loop: tick, then sleep until the next 16 ms boundary */
  start = next = now_ms();
  while (!done) {
    double t0, t1, c0, cpu;
    long w0, w;
    if (now_ms() - start > (double)o.max_seconds * 1e3) {
      fprintf(stderr, "host: the listing did not finish in %ld s\n",
              o.max_seconds);
      status = EXIT_COUNT;
      break;
    }
    lua_getfield(L, script, "tick");
    w0 = waits();
    c0 = clock_ms(CLOCK_THREAD_CPUTIME_ID);
    t0 = now_ms();
    call(L, 0, 1);
    t1 = now_ms();
    cpu = clock_ms(CLOCK_THREAD_CPUTIME_ID) - c0;
    w = waits() - w0;
    done = lua_toboolean(L, -1);
    lua_pop(L, 1);
    waited += w > 0;
    if (cpu > max_cpu) max_cpu = cpu;
    if ((w > 0 && t1 - t0 > o.bound_ms) || cpu > o.bound_ms)
      stalled++;
    else if (t1 - t0 > o.bound_ms)
      late++; /* preempted: other processes had the CPU */
    if (ticks == cap) {
      double *more = realloc(took, (cap = cap ? 2 * cap : 256) * sizeof *took);
      if (more == NULL) {
        fprintf(stderr, "host: out of memory\n");
        return 1;
      }
      took = more;
    }
    took[ticks++] = t1 - t0;
    if (t1 - t0 > max) max = t1 - t0;
    /* a late tick skips the boundaries it missed rather than bunching up */
    next += (double)o.tick_ms;
    while (next <= now_ms()) next += (double)o.tick_ms;
    if (!done) sleep_until_ms(next);
  }

  lua_getfield(L, script, "summary");
  call(L, 0, 4);
  calls = lua_tointeger(L, -4);
  pages = lua_tointeger(L, -3);
  total = lua_tointeger(L, -2);
  waiting = lua_tointeger(L, -1);
  lua_pop(L, 4);

  qsort(took, ticks, sizeof *took, cmp_double);
  p99 = ticks ? took[(ticks * 99 + 99) / 100 - 1] : 0;
  printf("ticks %lu (%ld with no page in yet), %.0f ms, tick every %ld ms\n",
         (unsigned long)ticks, (long)waiting, now_ms() - start, o.tick_ms);
  printf("calls %ld of meta.total_count %ld, pages %ld\n", (long)calls,
         (long)total, (long)pages);
  printf("tick wall max %.3f ms, p99 %.3f ms; CPU max %.3f ms; bound %.0f ms\n",
         max, p99, max_cpu, o.bound_ms);
  printf("ticks that waited %lu, stalled %lu, late only from preemption %lu\n",
         (unsigned long)waited, (unsigned long)stalled, (unsigned long)late);
  if (status == 0 && stalled > 0) {
    printf("FAIL: %lu tick(s) stalled (waited, or worked, over %.0f ms)\n",
           (unsigned long)stalled, o.bound_ms);
    status = EXIT_STALL;
  }
  if (status == 0 && calls != total) {
    printf("FAIL: %ld calls received, meta.total_count is %ld\n", (long)calls,
           (long)total);
    status = EXIT_COUNT;
  }
  if (status == 0) printf("ok\n");
  free(took);
  lua_close(L);
  return status;
}
