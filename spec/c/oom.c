/*
** spec/c/oom.c — osvi under allocation failures, meant to be built with
** -fsanitize=address,undefined and run with leak detection (see check.mk).
**
**   oom [--once | --sticky] [--only N] [--max N] [--leak-each]
**       URL [MODULE_DIR]
**
** For n = 1, 2, 3, ... it runs a whole small session in a fresh lua_State
** made by lua_newstate with an allocator that refuses the n-th allocation
** request (a request for a new block or a bigger one: shrinking and freeing
** never fail), until a run goes through without reaching n (and n is at
** least the size of a first, unhindered run: the count varies a little from
** state to state, as Lua seeds its string hashes per state). A run is:
**   luaL_openlibs; package.cpath = "MODULE_DIR/?.so;" .. default;
**   require "osvi"; then the script `session` below: 12 calls over three
**   pages of 5 (calls{per_page = 5, limit = 12}), the same again from a
**   client with prefetch = 2, one client:page{}, one
**   refused token (nil, err of kind "auth"), one usage error, osvi.query and
**   osvi.time.
** all inside one lua_pcall, then lua_close. Every run must end cleanly: the
** session completes with the right results, or ends with an error caused by
** the refused allocation (LUA_ERRMEM, or an osvi error object or a message
** that says so). Anything else (a wrong result, an unrelated error) fails the
** check; a crash, a leak or undefined behaviour is the sanitizers' to report.
**
** Lua 5.4 answers a refused request with an emergency collection and asks
** again with the same arguments. Were only the first request refused, that
** retry would absorb nearly every injected failure and the error paths would
** never run, so by default the retry of the refused request is refused too
** (the retry is recognised as the next growing request with the same block
** and sizes). --once refuses exactly one request instead; --sticky refuses
** every growing request from the n-th to the end of the run (memory that
** stays exhausted).
**
**   --once        refuse the n-th request only, not Lua's retry of it
**   --sticky      refuse the n-th request and every growing one after it
**   --only N      one run, with n = N (to reproduce a report)
**   --max N       give up (and fail) after N runs (default 100000)
**   --leak-each   run LeakSanitizer after every run, to name the n that leaks
**
** With LeakSanitizer linked in, the leak check is made at the end, before the
** verdict (PASS needs no bad outcome and no leak), and the exit code says it.
**
** osvi.so (from MODULE_DIR, default ".") and cjson.so are pinned with one
** dlopen each at start, so that lua_close does not unload and reload osvi.so, libcurl
** and OpenSSL thousands of times, and so that leak reports can name frames
** in them; each run still goes through require and luaopen_osvi.
*/
#define _GNU_SOURCE /* dlopen */

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#define TOKEN "osvi-test-token1"

/* LeakSanitizer's on-demand check, when linked in (weak: NULL otherwise). */
extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

/* ------------------------------------------------------------------------
** The failing allocator
** --------------------------------------------------------------------- */

/* What is refused (see the options above). */
enum { MODE_RETRY, MODE_ONCE, MODE_STICKY };

typedef struct alloc_state {
  unsigned long fail_at; /* the growing request to refuse, 1-based; 0: none */
  unsigned long count;   /* growing requests so far */
  int once;              /* do not refuse Lua's retry */
  int sticky;            /* refuse every growing request from fail_at on */
  int refusing;          /* sticky and fail_at reached */
  int injected;          /* request fail_at was refused */
  int retry_refused;     /* ... and so was Lua's retry of it */
  int retry_pending;     /* the last growing request was the refused one */
  void *r_ptr;           /* its arguments */
  size_t r_osize, r_nsize;
} alloc_state;

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  alloc_state *s = ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  /* For a new block (ptr == NULL) osize is the type of the object, not a
  ** size: any such request grows. */
  if (ptr == NULL || nsize > osize) {
    if (s->refusing) return NULL;
    if (s->retry_pending) {
      s->retry_pending = 0;
      if (ptr == s->r_ptr && osize == s->r_osize && nsize == s->r_nsize) {
        s->retry_refused = 1;
        return NULL;
      }
    }
    if (++s->count == s->fail_at) {
      s->injected = 1;
      s->refusing = s->sticky;
      if (!s->once) {
        s->retry_pending = 1;
        s->r_ptr = ptr;
        s->r_osize = osize;
        s->r_nsize = nsize;
      }
      return NULL;
    }
  } else {
    s->retry_pending = 0; /* an emergency collection does not shrink */
  }
  return realloc(ptr, nsize);
}

/* ------------------------------------------------------------------------
** One run
** --------------------------------------------------------------------- */

/* Checks go through WRONG(...), so that the host can tell a wrong result
** (a failure of the check) from an error caused by the refused request. */
static const char session[] =
    "local url, token = ...\n"
    "local function WRONG(fmt, ...)\n"
    "  error('WRONG: ' .. string.format(fmt, ...), 0)\n"
    "end\n"
    "local osvi = require 'osvi'\n"
    /* 1. 12 calls over 3 pages of 5 */
    "local client <close> = osvi.new { token = token, base_url = url,\n"
    "                                  max_retries = 0 }\n"
    "local cur = client:calls { per_page = 5, limit = 12 }\n"
    "local n, ids = 0, {}\n"
    "for call in cur do\n"
    "  local id = call.call_id\n"
    "  if type(id) ~= 'string' then WRONG('call without call_id') end\n"
    "  if ids[id] then WRONG('call %s twice', id) end\n"
    "  if math.type(call.duration_seconds) ~= 'integer' then\n"
    "    WRONG('duration_seconds is %s', math.type(call.duration_seconds))\n"
    "  end\n"
    "  ids[id] = true\n"
    "  n = n + 1\n"
    "end\n"
    "if n ~= 12 then WRONG('%d calls, expected 12', n) end\n"
    "if cur.meta.current_page ~= 3 then\n"
    "  WRONG('last page %s, expected 3', tostring(cur.meta.current_page))\n"
    "end\n"
    /* 1b. the same with 2 pages prefetched (libcurl's multi interface) */
    "local ahead <close> = osvi.new { token = token, base_url = url,\n"
    "                                 max_retries = 0, prefetch = 2 }\n"
    "local m = 0\n"
    "for call in ahead:calls { per_page = 5, limit = 12 } do\n"
    "  if not ids[call.call_id] then\n"
    "    WRONG('prefetching gave another call %s', tostring(call.call_id))\n"
    "  end\n"
    "  m = m + 1\n"
    "end\n"
    "if m ~= 12 then WRONG('%d calls with prefetch, expected 12', m) end\n"
    /* 2. one page */
    "local page, err = client:page { page = 2, per_page = 4 }\n"
    "if not page then error(err, 0) end\n"
    "if #page.data ~= 4 or page.meta.current_page ~= 2 then\n"
    "  WRONG('page 2 has %d calls, current_page %s', #page.data,\n"
    "        tostring(page.meta.current_page))\n"
    "end\n"
    /* 3. a refused token: an operational failure, returned */
    "local bad <close> = osvi.new { token = 'osvi-bad-token-0', base_url = url,\n"
    "                               max_retries = 0 }\n"
    "local none, auth = bad:page { per_page = 1 }\n"
    "if none ~= nil then WRONG('a page with a refused token') end\n"
    "if type(auth) ~= 'table' or auth.kind ~= 'auth' then error(auth, 0) end\n"
    "if not tostring(auth):find('401', 1, true) then\n"
    "  WRONG('auth error reads %s', tostring(auth))\n"
    "end\n"
    /* 4. a usage error: raised */
    "local ok, usage = pcall(client.calls, client, { stauts = 'picked' })\n"
    "if ok then WRONG('no usage error for a misspelt filter') end\n"
    "if type(usage) ~= 'table' or usage.kind ~= 'usage' then\n"
    "  error(usage, 0)\n"
    "end\n"
    "if usage.key ~= 'stauts' or not tostring(usage):find('status', 1, true)\n"
    "then\n"
    "  WRONG('usage error reads %s', tostring(usage))\n"
    "end\n"
    /* 5. helpers */
    "local q = osvi.query { status = { 'picked', 'busy' },\n"
    "                       phone_number = '+9198' }\n"
    "if q ~= 'status=picked,busy&phone_number=%2B9198' then\n"
    "  WRONG('query %s', q)\n"
    "end\n"
    "if osvi.time('2026-06-01') ~= 1780252200 then\n"
    "  WRONG('time %s', tostring(osvi.time('2026-06-01')))\n"
    "end\n"
    "return n\n";

typedef struct run_args {
  const char *url, *dir;
  const char *phase; /* how far the run got */
} run_args;

/* The whole run but the state's creation and closing, in one protected
** call: every API call that may allocate is made in here. */
static int run_protected(lua_State *L) {
  run_args *a = lua_touserdata(L, 1);
  a->phase = "openlibs";
  luaL_openlibs(L);

  a->phase = "require";
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "cpath");
  lua_pushfstring(L, "%s/?.so;%s", a->dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "cpath");
  lua_settop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "osvi");
  lua_call(L, 1, 0);

  a->phase = "load";
  if (luaL_loadbuffer(L, session, sizeof session - 1, "=session") != LUA_OK)
    return lua_error(L);

  a->phase = "session";
  lua_pushstring(L, a->url);
  lua_pushliteral(L, TOKEN);
  lua_call(L, 2, 1);
  a->phase = "done";
  return 1;
}

static int warnings; /* lua_warning calls, e.g. an error in a __gc */

static void count_warning(void *ud, const char *msg, int tocont) {
  (void)ud;
  (void)msg;
  if (!tocont) warnings++;
}

/* Outcomes, counted by label. */
#define MAX_OUTCOMES 64

static struct outcome {
  char label[160];
  unsigned long count, first_n;
  int bad; /* fails the check */
} outcomes[MAX_OUTCOMES];
static int noutcomes, bad_runs;
static int verbose; /* --only: show how the run ended */

static void record(const char *label, unsigned long n, int bad,
                   const char *detail) {
  int i;
  if (bad) bad_runs++;
  if ((bad && bad_runs <= 10) || verbose)
    fprintf(stderr, "oom: n = %lu: %s%s%s\n", n, label, detail ? ": " : "",
            detail ? detail : "");
  for (i = 0; i < noutcomes; i++)
    if (strcmp(outcomes[i].label, label) == 0) break;
  if (i == noutcomes) {
    if (noutcomes == MAX_OUTCOMES)
      i = MAX_OUTCOMES - 1; /* lump the rest */
    else
      noutcomes++;
    snprintf(outcomes[i].label, sizeof outcomes[i].label, "%s", label);
    outcomes[i].first_n = n;
  }
  outcomes[i].count++;
  outcomes[i].bad |= bad;
}

static int mentions_memory(const char *s) {
  return s != NULL && strstr(s, "not enough memory") != NULL;
}

/* Labels the error at the top after a failed run; injection is off. */
static void classify_error(lua_State *L, const run_args *a, int status,
                           const alloc_state *st, unsigned long n) {
  char label[160];
  const char *msg = NULL;
  int bad = 0;

  if (lua_type(L, -1) == LUA_TTABLE && lua_getmetatable(L, -1)) {
    int is_osvi;
    luaL_getmetatable(L, "osvi.Error");
    is_osvi = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (is_osvi) {
      lua_getfield(L, -1, "kind");
      lua_getfield(L, -2, "message");
      msg = lua_tostring(L, -1);
      snprintf(label, sizeof label, "%s: osvi error, kind %s%s", a->phase,
               lua_isstring(L, -2) ? lua_tostring(L, -2) : "?",
               mentions_memory(msg) ? " (not enough memory)" : "");
      bad = !mentions_memory(msg);
      lua_pop(L, 2);
      msg = luaL_tolstring(L, -1, NULL); /* the whole line, for a report */
    } else {
      snprintf(label, sizeof label, "%s: a table that is no osvi error",
               a->phase);
      bad = 1;
    }
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    msg = lua_tostring(L, -1);
    if (strncmp(msg, "WRONG:", 6) == 0) {
      snprintf(label, sizeof label, "%s: wrong result", a->phase);
      bad = 1;
    } else if (status == LUA_ERRMEM) {
      snprintf(label, sizeof label, "%s: LUA_ERRMEM", a->phase);
      bad = !mentions_memory(msg);
    } else if (mentions_memory(msg)) {
      snprintf(label, sizeof label, "%s: error message, not enough memory",
               a->phase);
    } else {
      snprintf(label, sizeof label, "%s: unrelated error message", a->phase);
      bad = 1;
    }
  } else {
    snprintf(label, sizeof label, "%s: error value of type %s", a->phase,
             luaL_typename(L, -1));
    bad = 1;
  }
  if (!st->injected) { /* an error with no refused request at all */
    snprintf(label + strlen(label), sizeof label - strlen(label),
             " WITHOUT an injected failure");
    bad = 1;
  }
  record(label, n, bad, msg);
}

/* One run refusing request n (0: none). Returns how many growing requests
** it made and sets *injected. */
static unsigned long run_once(const char *url, const char *dir, unsigned long n,
                              int mode, int *injected) {
  alloc_state st;
  run_args a;
  lua_State *L;
  int status;

  memset(&st, 0, sizeof st);
  st.fail_at = n;
  st.once = mode == MODE_ONCE;
  st.sticky = mode == MODE_STICKY;
  a.url = url;
  a.dir = dir;
  a.phase = "lua_newstate";

  L = lua_newstate(failing_alloc, &st);
  if (L == NULL) {
    record("lua_newstate returned NULL", n, !st.injected, NULL);
    *injected = st.injected;
    return st.count;
  }
  lua_setwarnf(L, count_warning, NULL);
  a.phase = "lua_pcall"; /* the call itself needs a CallInfo */
  /* neither pushing a light C function nor a light userdata allocates, and
  ** the new state has stack room for them */
  lua_pushcfunction(L, run_protected);
  lua_pushlightuserdata(L, &a);
  status = lua_pcall(L, 1, 1, 0);
  st.fail_at = 0; /* the run is over: what follows must not fail */
  st.retry_pending = 0;
  st.refusing = 0;

  if (status == LUA_OK) {
    if (lua_tointeger(L, -1) != 12)
      record("session: completed, wrong result", n, 1, NULL);
    else if (st.injected)
      record(st.retry_refused
                 ? "session: completed (failure and retry absorbed)"
                 : "session: completed (failure absorbed)",
             n, 0, NULL);
    else
      record("session: completed, no failure injected", n, 0, NULL);
  } else {
    classify_error(L, &a, status, &st, n);
  }
  lua_close(L);
  *injected = st.injected;
  return st.count;
}

/* ------------------------------------------------------------------------
** Main
** --------------------------------------------------------------------- */

/* Keeps osvi.so and cjson.so loaded for the whole process. */
static int pin_modules(const char *dir) {
  static const char *const names[] = {"osvi", "cjson", NULL};
  int i, rc = 0;
  lua_State *L = luaL_newstate();
  if (L == NULL) return -1;
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.so;", dir);
  lua_getfield(L, -2, "cpath");
  lua_concat(L, 2);
  lua_setfield(L, -2, "cpath");
  for (i = 0; names[i] != NULL; i++) {
    const char *path;
    lua_getfield(L, 1, "searchpath");
    lua_pushstring(L, names[i]);
    lua_getfield(L, 1, "cpath");
    lua_call(L, 2, 1);
    path = lua_tostring(L, -1);
    if (path == NULL || dlopen(path, RTLD_NOW | RTLD_LOCAL) == NULL) {
      fprintf(stderr, "oom: cannot load %s: %s\n", names[i],
              path ? dlerror() : "not found in package.cpath");
      rc = -1;
    } else {
      fprintf(stderr, "oom: %s is %s\n", names[i], path);
    }
    lua_pop(L, 1);
  }
  lua_close(L);
  return rc;
}

static unsigned long parse_count(const char *s) {
  char *end;
  unsigned long v = strtoul(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v == 0) {
    fprintf(stderr, "oom: expected a positive number, got '%s'\n", s);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  static const char *const mode_names[] = {
      "refuse-retry (the n-th request and Lua's retry of it)",
      "--once (the n-th request only)",
      "--sticky (every request from the n-th on)"};
  const char *url = NULL, *dir = ".", *argv_only = "";
  unsigned long n, only = 0, max = 100000, total, runs;
  int i, mode = MODE_RETRY, leak_each = 0, injected, leaks = 0;
  int positional = 0, status;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--once") == 0) {
      mode = MODE_ONCE;
    } else if (strcmp(argv[i], "--sticky") == 0) {
      mode = MODE_STICKY;
    } else if (strcmp(argv[i], "--leak-each") == 0) {
      leak_each = 1;
    } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      argv_only = argv[++i];
      only = parse_count(argv_only);
    } else if (strcmp(argv[i], "--max") == 0 && i + 1 < argc) {
      max = parse_count(argv[++i]);
    } else if (argv[i][0] != '-' && positional == 0) {
      url = argv[i];
      positional++;
    } else if (argv[i][0] != '-' && positional == 1) {
      dir = argv[i];
      positional++;
    } else {
      url = NULL;
      break;
    }
  }
  if (url == NULL) {
    fprintf(stderr,
            "usage: %s [--once | --sticky] [--only N] [--max N] "
            "[--leak-each] URL [MODULE_DIR]\n",
            argv[0]);
    return 2;
  }
  if (strncmp(url, "http://127.", 11) != 0) { /* never anything but local */
    fprintf(stderr, "oom: expected http://127.x.y.z:PORT, got %s\n", url);
    return 2;
  }
  if (leak_each && __lsan_do_recoverable_leak_check == NULL) {
    fprintf(stderr, "oom: --leak-each needs LeakSanitizer\n");
    return 2;
  }
  if (pin_modules(dir) != 0) return 1;

  /* a run with nothing refused: the session works, and its size */
  total = run_once(url, dir, 0, mode, &injected);
  if (bad_runs > 0) {
    fprintf(stderr,
            "oom: the session fails even without a refused "
            "request\n");
    return 1;
  }
  memset(outcomes, 0, sizeof outcomes);
  noutcomes = 0;
  warnings = 0;
  fprintf(stderr,
          "oom: a whole run makes %lu growing requests; n = %s, "
          "mode %s\n",
          total, only ? argv_only : "1, 2, 3, ...", mode_names[mode]);
  verbose = only != 0;

  for (n = only ? only : 1;; n++) {
    if (!only && n > max) {
      fprintf(stderr, "oom: no run completed within --max %lu\n", max);
      bad_runs++;
      n--; /* the last run made */
      break;
    }
    run_once(url, dir, n, mode, &injected);
    if (leak_each && __lsan_do_recoverable_leak_check() != 0) {
      leaks++;
      fprintf(stderr, "oom: n = %lu leaked (report above)\n", n);
    }
    /* at least as far as the unhindered run went (see the top) */
    if (only || (!injected && n >= total)) break;
  }

  runs = only ? 1 : n;
  printf("oom: %lu run%s (n = %lu..%lu), mode %s, outcomes:\n", runs,
         runs == 1 ? "" : "s", only ? only : 1UL, n,
         mode == MODE_RETRY  ? "refuse-retry"
         : mode == MODE_ONCE ? "--once"
                             : "--sticky");
  for (i = 0; i < noutcomes; i++)
    printf("  %6lu  %s (first at n = %lu)%s\n", outcomes[i].count,
           outcomes[i].label, outcomes[i].first_n,
           outcomes[i].bad ? "  <-- FAIL" : "");
  if (warnings > 0)
    printf("  (%d warning%s from Lua, e.g. errors in __gc)\n", warnings,
           warnings == 1 ? "" : "s");
  if (leak_each)
    printf("  %d run%s leaked%s\n", leaks, leaks == 1 ? "" : "s",
           leaks ? " (see the reports above)" : "");
  /* LeakSanitizer would look for leaks only in an exit handler, after this
  ** verdict: look now, so that the verdict includes leaks. */
  fflush(stdout);
  if (__lsan_do_recoverable_leak_check != NULL &&
      __lsan_do_recoverable_leak_check() != 0) {
    printf("oom: memory leaked: see LeakSanitizer's report above\n");
    leaks++;
  }
  status = bad_runs == 0 && leaks == 0 ? 0 : 1;
  printf("oom: %s\n", status == 0 ? "PASS" : "FAIL");
  fflush(stdout);
  /* The check is done: skip the exit handlers, where LeakSanitizer would
  ** print the same report (or its list of suppressions) a second time. */
  if (__lsan_do_recoverable_leak_check != NULL) _exit(status);
  return status;
}
