/*
** examples/embed/host.c: a game-loop host that embeds Lua 5.4 with osvi
** linked in statically, and lists calls beside a periodic tick that must
** never block.
**
**   host [--url URL] [--token TOKEN] [--script PATH] [--per-page N]
**        [--prefetch N] [--tick-ms MS] [--bound-ms MS] [--max-seconds S]
**        [--tick-poll | --blocking]
**
** By default the host waits in epoll_wait on two descriptors: a timerfd for
** its own tick, and the cursor's (cur:pollfd(), readable when a transfer can
** move on), with cur:timeout() as the deadline; it calls cur:poll() only
** when osvi has something, and sleeps otherwise. --tick-ms 0: no tick of its
** own (the host sleeps until osvi has news). --tick-poll: the old way, every
** tick calls cur:poll() whether anything came or not. The script measures
** each page's delay from the moment the local server sent it (its log) to
** its calls reaching the host, the same way in both modes.
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/timerfd.h>

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
  int blocking, tick_poll;
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
  o->tick_poll = 0;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--blocking") == 0) {
      o->blocking = 1;
      continue;
    }
    if (strcmp(a, "--tick-poll") == 0) {
      o->tick_poll = 1;
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
      o->tick_ms = number_arg(a, v, 0, 1000);
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
          "[--max-seconds S] [--tick-poll | --blocking]\n",
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

/* ------------------------------------------------------------------------
** Measurements of each call into the script
** --------------------------------------------------------------------- */

typedef struct series {
  double *v;
  size_t n, cap;
} series;

static void add(series *s, double x) {
  if (s->n == s->cap) {
    double *more =
        realloc(s->v, (s->cap = s->cap ? 2 * s->cap : 256) * sizeof *more);
    if (more == NULL) {
      fprintf(stderr, "host: out of memory\n");
      exit(1);
    }
    s->v = more;
  }
  s->v[s->n++] = x;
}

static double pct(series *s, int p) {
  if (s->n == 0) return 0;
  qsort(s->v, s->n, sizeof *s->v, cmp_double);
  return s->v[(s->n * (size_t)p + 99) / 100 - (s->n * (size_t)p + 99 >= 100)];
}

typedef struct stats {
  series took; /* wall ms of each call into the script */
  double max, max_cpu;
  size_t waited, stalled, late;
} stats;

/* Calls script[name] with no argument and `nres` results, measuring it. */
static void measured(lua_State *L, int script, const char *name, int nres,
                     const options *o, stats *st) {
  double t0, t1, c0, cpu;
  long w0, w;
  lua_getfield(L, script, name);
  w0 = waits();
  c0 = clock_ms(CLOCK_THREAD_CPUTIME_ID);
  t0 = now_ms();
  call(L, 0, nres);
  t1 = now_ms();
  cpu = clock_ms(CLOCK_THREAD_CPUTIME_ID) - c0;
  w = waits() - w0;
  st->waited += w > 0;
  if (cpu > st->max_cpu) st->max_cpu = cpu;
  if ((w > 0 && t1 - t0 > o->bound_ms) || cpu > o->bound_ms)
    st->stalled++;
  else if (t1 - t0 > o->bound_ms)
    st->late++; /* preempted: other processes had the CPU */
  add(&st->took, t1 - t0);
  if (t1 - t0 > st->max) st->max = t1 - t0;
}

/* script.pollfd() and script.timeout() (ms, -1: none) */
static int script_fd(lua_State *L, int script) {
  int fd;
  lua_getfield(L, script, "pollfd");
  call(L, 0, 1);
  fd = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : -1;
  lua_pop(L, 1);
  return fd;
}

static int script_timeout_ms(lua_State *L, int script) {
  int ms = -1;
  lua_getfield(L, script, "timeout");
  call(L, 0, 1);
  if (lua_isnumber(L, -1)) {
    double t = lua_tonumber(L, -1) * 1e3;
    ms = t > 1e6 ? 1000000 : (int)t + (t > (int)t);
  }
  lua_pop(L, 1);
  return ms;
}

int main(int argc, char **argv) {
  options o;
  lua_State *L;
  double start;
  stats st;
  size_t ticks = 0, wakes = 0, osvi_wakes = 0;
  lua_Integer calls, pages, total, waiting;
  int done = 0, status = 0, script, fd;

  parse_args(argc, argv, &o);
  memset(&st, 0, sizeof st);
  L = luaL_newstate();
  if (L == NULL) return EXIT_LUA;
  luaL_openlibs(L);
  /* osvi into package.loaded (not a global: the 0), from this binary;
  ** luaopen_osvi itself does require "cjson" (the system's lua-cjson). */
  luaL_requiref(L, "osvi", luaopen_osvi, 0);
  lua_pop(L, 1);

  /* the script gets its settings as `...` and returns {tick, pump, pollfd,
  ** timeout, summary} */
  if (luaL_loadfile(L, o.script) != LUA_OK) {
    fprintf(stderr, "host: %s\n", lua_tostring(L, -1));
    return EXIT_LUA;
  }
  lua_createtable(L, 0, 6);
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
  lua_pushboolean(L, o.tick_poll || o.blocking);
  lua_setfield(L, -2, "tick_poll");
  call(L, 1, 1);
  script = lua_gettop(L);
  if (!lua_istable(L, script)) {
    fprintf(stderr, "host: %s did not return {tick = ..., summary = ...}\n",
            o.script);
    return EXIT_LUA;
  }

  fd = script_fd(L, script);

  start = now_ms();
  if (o.tick_poll || o.blocking) {
    /* the fixed-step loop: tick (which polls), then sleep until the next
    ** tick boundary */
    double next = start;
    long tick_ms = o.tick_ms > 0 ? o.tick_ms : 16;
    while (!done) {
      if (now_ms() - start > (double)o.max_seconds * 1e3) {
        fprintf(stderr, "host: the listing did not finish in %ld s\n",
                o.max_seconds);
        status = EXIT_COUNT;
        break;
      }
      measured(L, script, "tick", 1, &o, &st);
      ticks++;
      wakes++;
      done = lua_toboolean(L, -1);
      lua_pop(L, 1);
      next += (double)tick_ms;
      while (next <= now_ms()) next += (double)tick_ms;
      if (!done) sleep_until_ms(next);
    }
  } else {
    /* wait on the tick's timerfd and the cursor's descriptor at once */
    int ep = epoll_create1(EPOLL_CLOEXEC), tfd = -1;
    struct epoll_event ev;
    if (ep < 0) return 1;
    if (o.tick_ms > 0) {
      struct itimerspec its;
      tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
      memset(&its, 0, sizeof its);
      its.it_interval.tv_sec = o.tick_ms / 1000;
      its.it_interval.tv_nsec = (o.tick_ms % 1000) * 1000000L;
      its.it_value = its.it_interval;
      if (tfd < 0 || timerfd_settime(tfd, 0, &its, NULL) != 0) return 1;
      memset(&ev, 0, sizeof ev);
      ev.events = EPOLLIN;
      ev.data.u32 = 1;
      epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    }
    if (fd >= 0) {
      memset(&ev, 0, sizeof ev);
      ev.events = EPOLLIN;
      ev.data.u32 = 2;
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    while (!done) {
      struct epoll_event evs[4];
      int i, n, timeout = script_timeout_ms(L, script), news = 0;
      double left = (double)o.max_seconds * 1e3 - (now_ms() - start);
      if (left <= 0) {
        fprintf(stderr, "host: the listing did not finish in %ld s\n",
                o.max_seconds);
        status = EXIT_COUNT;
        break;
      }
      if (timeout < 0 || timeout > left) timeout = (int)left + 1;
      n = epoll_wait(ep, evs, 4, timeout);
      wakes++;
      if (n == 0) news = 1; /* osvi's deadline */
      for (i = 0; i < n; i++) {
        if (evs[i].data.u32 == 1) {
          uint64_t expired;
          if (read(tfd, &expired, sizeof expired) < 0) {}
          measured(L, script, "tick", 0, &o, &st); /* the host's own work */
          ticks++;
        } else {
          news = 1;
        }
      }
      if (news) {
        osvi_wakes++;
        measured(L, script, "pump", 1, &o, &st);
        done = lua_toboolean(L, -1);
        lua_pop(L, 1);
      }
    }
    if (tfd >= 0) close(tfd);
    close(ep);
  }

  lua_getfield(L, script, "summary");
  call(L, 0, 4);
  calls = lua_tointeger(L, -4);
  pages = lua_tointeger(L, -3);
  total = lua_tointeger(L, -2);
  waiting = lua_tointeger(L, -1);
  lua_pop(L, 4);

  {
    double wall = now_ms() - start, p99 = pct(&st.took, 99);
    printf(
        "mode %s: %lu ticks (%ld found no page in yet), %.0f ms, "
        "tick every %ld ms\n",
        o.blocking    ? "blocking"
        : o.tick_poll ? "tick-poll"
                      : "descriptor",
        (unsigned long)ticks, (long)waiting, wall, o.tick_ms);
    printf("calls %ld of meta.total_count %ld, pages %ld\n", (long)calls,
           (long)total, (long)pages);
    printf(
        "call wall max %.3f ms, p99 %.3f ms; CPU max %.3f ms; bound %.0f "
        "ms\n",
        st.max, p99, st.max_cpu, o.bound_ms);
    printf(
        "calls that waited %lu, stalled %lu, late only from preemption "
        "%lu\n",
        (unsigned long)st.waited, (unsigned long)st.stalled,
        (unsigned long)st.late);
    printf(
        "wake-ups %lu (%.1f/s), for osvi %lu (%.1f/s)\n", (unsigned long)wakes,
        (double)wakes * 1e3 / wall,
        (unsigned long)(o.tick_poll || o.blocking ? wakes : osvi_wakes),
        (double)(o.tick_poll || o.blocking ? wakes : osvi_wakes) * 1e3 / wall);
  }
  if (status == 0 && st.stalled > 0) {
    printf("FAIL: %lu call(s) stalled (waited, or worked, over %.0f ms)\n",
           (unsigned long)st.stalled, o.bound_ms);
    status = EXIT_STALL;
  }
  if (status == 0 && calls != total) {
    printf("FAIL: %ld calls received, meta.total_count is %ld\n", (long)calls,
           (long)total);
    status = EXIT_COUNT;
  }
  if (status == 0) printf("ok\n");
  free(st.took.v);
  lua_close(L);
  return status;
}
