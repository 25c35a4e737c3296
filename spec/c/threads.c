/*
** spec/c/threads.c — osvi from many threads at once, each with its own
** lua_State, meant to be built and run under ThreadSanitizer (see check.mk).
**
**   threads URL [MODULE_DIR [ROUNDS]]
**
** URL is the local stand-in server (spec/support/server.lua); MODULE_DIR
** (default ".") is where osvi.so is looked for first: package.cpath becomes
** "MODULE_DIR/?.so;" followed by the default path, so cjson still comes from
** the system.
**
** What it checks:
**   - NTHREADS threads each make a lua_State (luaL_newstate + luaL_openlibs),
**     all call require "osvi" at the same moment (a barrier), then each pages
**     through every call ITERATIONS times with per_page = 10, one new client
**     per iteration (prefetching 0, 1, 2... pages ahead with libcurl's
**     multi interface), and checks it got meta.total_count calls with no id
**     twice; each iteration also reads one page with client:page, meets a
**     refused token (401) and a usage error; then lua_close.
**   - The server saw exactly the requests the threads made (its
**     /_control/stats, read with LuaSocket before and after).
**   - curl_global_init ran exactly once in the process, however many states
**     loaded the module: this file defines curl_global_init itself (the
**     executable is linked so that the definition is exported), counts the
**     calls and forwards them to libcurl's through dlsym(RTLD_NEXT).
**
** No state is closed before every thread has loaded the module (a second
** barrier), so osvi.so stays loaded throughout a round: the count then tests
** osvi's own once-only logic under a real race. ROUNDS (default 1) repeats
** the whole round, each after every state of the one before is closed; as
** lua_close unloads C modules (dlclose), a module whose once-only state
** lives in osvi.so is then loaded afresh, so ROUNDS > 1 also asks whether
** "exactly once" survives the module being unloaded and loaded again.
**
** Exits 0 only when every thread succeeded, the request count matches and
** curl_global_init was called once; prints a one-line summary either way.
*/
#define _GNU_SOURCE /* RTLD_NEXT, pthread barriers */

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#define NTHREADS 8
#define ITERATIONS 3
#define PER_PAGE 10
#define TOKEN "osvi-test-token1"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* ------------------------------------------------------------------------
** The curl_global_init interposer
** --------------------------------------------------------------------- */

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static long init_calls;                    /* guarded by init_lock */
static CURLcode (*real_global_init)(long); /* guarded by init_lock */

/* osvi.so is loaded with RTLD_LOCAL, but its undefined symbols are looked up
** in the global scope first, and the executable comes first there: this
** definition wins over libcurl's for every caller. */
CURLcode curl_global_init(long flags) {
  CURLcode (*real)(long);
  pthread_mutex_lock(&init_lock);
  init_calls++;
  if (real_global_init == NULL) {
    void *sym = dlsym(RTLD_NEXT, "curl_global_init");
    /* object pointer to function pointer, as POSIX allows (not ISO C) */
    memcpy(&real_global_init, &sym, sizeof real_global_init);
  }
  real = real_global_init;
  pthread_mutex_unlock(&init_lock);
  if (real == NULL) {
    fprintf(stderr, "threads: dlsym(RTLD_NEXT, curl_global_init) failed\n");
    return CURLE_FAILED_INIT;
  }
  /* not under the lock: concurrent calls must reach libcurl concurrently,
  ** as they would without this harness */
  return real(flags);
}

static long global_init_calls(void) {
  long n;
  pthread_mutex_lock(&init_lock);
  n = init_calls;
  pthread_mutex_unlock(&init_lock);
  return n;
}

/* ------------------------------------------------------------------------
** One thread
** --------------------------------------------------------------------- */

/* Runs in each thread's state with (osvi, url, token, iterations, per_page);
** returns the calls seen, the requests made and meta.total_count. */
static const char session[] =
    "local osvi, url, token, iterations, per_page = ...\n"
    "local calls, requests, total = 0, 0, nil\n"
    "for i = 1, iterations do\n"
    /* iteration i prefetches i - 1 pages: 0 (none), 1, 2 */
    "  local client <close> = osvi.new { token = token, base_url = url,\n"
    "                                    prefetch = i - 1 }\n"
    "  local cur = client:calls { per_page = per_page }\n"
    "  local n, ids = 0, {}\n"
    "  for call in cur do\n"
    "    local id = call.call_id\n"
    "    if type(id) ~= 'string' then error('a call without a call_id') end\n"
    "    if ids[id] then error('call ' .. id .. ' yielded twice') end\n"
    "    ids[id] = true\n"
    "    n = n + 1\n"
    "  end\n"
    "  local meta = cur.meta\n"
    "  if not meta then error('no meta after the iteration') end\n"
    "  if n ~= meta.total_count then\n"
    "    error(string.format('iteration %d: %d calls, meta.total_count = %d',\n"
    "                        i, n, meta.total_count))\n"
    "  end\n"
    "  if total and total ~= n then\n"
    "    error(string.format('iteration %d: %d calls, before %d', i, n, total))\n"
    "  end\n"
    "  total = n\n"
    "  calls = calls + n\n"
    "  requests = requests + math.max(meta.total_pages, 1)\n"
    /* one page, a refused token and a usage error: the other paths */
    "  local page, err = client:page { page = 2, per_page = 7 }\n"
    "  if not page then error(err, 0) end\n"
    "  if #page.data ~= math.min(7, math.max(n - 7, 0)) then\n"
    "    error('page 2 has ' .. #page.data .. ' calls')\n"
    "  end\n"
    "  local bad <close> = osvi.new { token = 'osvi-bad-token-0',\n"
    "                                 base_url = url }\n"
    "  local none, auth = bad:page()\n"
    "  if none ~= nil or auth.kind ~= 'auth' then\n"
    "    error('a refused token gave ' .. tostring(none or auth))\n"
    "  end\n"
    "  requests = requests + 2\n"
    "  local ok, usage = pcall(client.calls, client, { stauts = 'picked' })\n"
    "  if ok or usage.kind ~= 'usage' then\n"
    "    error('no usage error: ' .. tostring(usage))\n"
    "  end\n"
    "end\n"
    "return calls, requests, total\n";

typedef struct job {
  int id;
  const char *url;
  const char *cpath_prefix; /* "MODULE_DIR/?.so;" */
  /* results */
  int ok;
  lua_Integer calls, requests, total;
  char module_path[512]; /* where require found osvi */
  char msg[512];         /* what went wrong, when !ok */
} job;

static pthread_barrier_t before_require, after_require;

static void fail(job *j, const char *what, lua_State *L) {
  const char *detail = "";
  if (L != NULL && lua_gettop(L) > 0) {
    detail = luaL_tolstring(L, -1, NULL); /* shows osvi error objects too */
  }
  snprintf(j->msg, sizeof j->msg, "%s%s%s", what, *detail ? ": " : "", detail);
  j->ok = 0;
}

/* lua_CFunction(prefix): sets package.cpath = prefix .. package.cpath and
** returns package.searchpath("osvi", package.cpath), where require will find
** the module (nil when it will not). */
static int setup_path(lua_State *L) {
  const char *prefix = lua_tostring(L, 1);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "cpath");
  lua_pushfstring(L, "%s%s", prefix, lua_tostring(L, -1));
  lua_setfield(L, -3, "cpath");
  lua_getfield(L, -2, "searchpath");
  lua_pushliteral(L, "osvi");
  lua_getfield(L, -4, "cpath");
  lua_call(L, 2, 1);
  return 1;
}

static void *thread_main(void *arg) {
  job *j = arg;
  lua_State *L = luaL_newstate();
  int loaded = 0;

  j->ok = 1;
  if (L == NULL) {
    fail(j, "luaL_newstate failed", NULL);
  } else {
    luaL_openlibs(L);
    lua_pushcfunction(L, setup_path);
    lua_pushstring(L, j->cpath_prefix);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      fail(j, "setting package.cpath", L);
    } else {
      snprintf(j->module_path, sizeof j->module_path, "%s",
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "(not found)");
      lua_pop(L, 1);
    }
  }

  /* every thread loads the module at the same moment: the first-use
  ** initialisation is raced for real */
  pthread_barrier_wait(&before_require);
  if (j->ok) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "osvi");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK)
      fail(j, "require \"osvi\"", L);
    else
      loaded = 1; /* the module table stays on the stack */
  }
  /* nobody closes a state (and so maybe unloads osvi.so) before all have
  ** loaded it */
  pthread_barrier_wait(&after_require);

  if (loaded) {
    if (luaL_loadbuffer(L, session, sizeof session - 1, "=session") != LUA_OK) {
      fail(j, "loading the session script", L);
    } else {
      lua_insert(L, -2); /* script, osvi */
      lua_pushstring(L, j->url);
      lua_pushliteral(L, TOKEN);
      lua_pushinteger(L, ITERATIONS);
      lua_pushinteger(L, PER_PAGE);
      if (lua_pcall(L, 5, 3, 0) != LUA_OK) {
        fail(j, "paging", L);
      } else {
        j->calls = lua_tointeger(L, -3);
        j->requests = lua_tointeger(L, -2);
        j->total = lua_tointeger(L, -1);
      }
    }
  }
  if (L != NULL) lua_close(L);
  return NULL;
}

/* ------------------------------------------------------------------------
** The server's counters, through LuaSocket in a state of the main thread
** --------------------------------------------------------------------- */

static const char stats_script[] =
    "local url = ...\n"
    "local http = require 'socket.http'\n"
    "local cjson = require 'cjson'\n"
    "local function get(path)\n"
    "  local body, code = http.request(url .. path)\n"
    "  if code ~= 200 then\n"
    "    error('GET ' .. path .. ': ' .. tostring(body or code))\n"
    "  end\n"
    "  return cjson.decode(body)\n"
    "end\n"
    "local s = get('/_control/stats')\n"
    "return s.requests, s.connections, #get('/_control/calls').data\n";

typedef struct stats {
  lua_Integer requests, connections, calls;
} stats;

/* Returns 0 and fills *s, or -1 after printing why. */
static int server_stats(const char *url, stats *s) {
  int rc = 0;
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "threads: luaL_newstate failed\n");
    return -1;
  }
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, stats_script, sizeof stats_script - 1, "=stats") !=
          LUA_OK ||
      (lua_pushstring(L, url), lua_pcall(L, 1, 3, 0)) != LUA_OK) {
    fprintf(stderr, "threads: reading the server's stats: %s\n",
            lua_tostring(L, -1));
    rc = -1;
  } else {
    s->requests = lua_tointeger(L, -3);
    s->connections = lua_tointeger(L, -2);
    s->calls = lua_tointeger(L, -1);
  }
  lua_close(L);
  return rc;
}

/* ------------------------------------------------------------------------
** Main
** --------------------------------------------------------------------- */

/* One round: NTHREADS threads, each with its own state, all joined (and
** every state closed) before it returns. Adds to the totals; returns the
** number of threads that failed. */
static int run_round(int round, const char *url, const char *prefix,
                     lua_Integer expected_total, lua_Integer *calls,
                     lua_Integer *requests, int *ok_threads, char *module_path,
                     size_t module_path_size) {
  static job jobs[NTHREADS];
  pthread_t tids[NTHREADS];
  int i, failed = 0;

  pthread_barrier_init(&before_require, NULL, NTHREADS);
  pthread_barrier_init(&after_require, NULL, NTHREADS);
  for (i = 0; i < NTHREADS; i++) {
    memset(&jobs[i], 0, sizeof jobs[i]);
    jobs[i].id = i + 1;
    jobs[i].url = url;
    jobs[i].cpath_prefix = prefix;
    if (pthread_create(&tids[i], NULL, thread_main, &jobs[i]) != 0) {
      /* the barriers count NTHREADS: without every thread it would hang */
      fprintf(stderr, "threads: pthread_create failed\n");
      exit(1);
    }
  }
  for (i = 0; i < NTHREADS; i++) pthread_join(tids[i], NULL);
  pthread_barrier_destroy(&before_require);
  pthread_barrier_destroy(&after_require);

  for (i = 0; i < NTHREADS; i++) {
    job *j = &jobs[i];
    if (!j->ok) {
      fprintf(stderr, "threads: round %d, thread %d failed: %s\n", round, j->id,
              j->msg);
      failed++;
      continue;
    }
    if (j->total != expected_total) {
      fprintf(stderr,
              "threads: round %d, thread %d saw %ld calls, the "
              "server has %ld\n",
              round, j->id, (long)j->total, (long)expected_total);
      failed++;
      continue;
    }
    (*ok_threads)++;
    *calls += j->calls;
    *requests += j->requests;
  }
  snprintf(module_path, module_path_size, "%s", jobs[0].module_path);
  return failed;
}

int main(int argc, char **argv) {
  char prefix[512], module_path[512];
  const char *url, *dir;
  stats before, after;
  lua_Integer calls = 0, requests = 0;
  long init_count;
  int round, rounds = 1, ok_threads = 0, pass = 1;

  if (argc < 2 || argc > 4 || (argc > 3 && (rounds = atoi(argv[3])) < 1)) {
    fprintf(stderr, "usage: %s URL [MODULE_DIR [ROUNDS]]\n", argv[0]);
    return 2;
  }
  url = argv[1];
  dir = argc > 2 ? argv[2] : ".";
  if (strncmp(url, "http://127.", 11) != 0) { /* never anything but local */
    fprintf(stderr, "threads: expected http://127.x.y.z:PORT, got %s\n", url);
    return 2;
  }
  snprintf(prefix, sizeof prefix, "%s/?.so;", dir);

  /* libcurl must be a dependency of the executable itself (not just of
  ** osvi.so) for dlsym(RTLD_NEXT) to find it: this call makes sure the
  ** link keeps it. */
  fprintf(stderr, "threads: libcurl %s, module dir %s, %s\n", curl_version(),
          dir, url);

  if (server_stats(url, &before) != 0) return 1;

  for (round = 1; round <= rounds; round++)
    if (run_round(round, url, prefix, before.calls, &calls, &requests,
                  &ok_threads, module_path, sizeof module_path) != 0)
      pass = 0;
  fprintf(stderr, "threads: osvi loaded from %s\n", module_path);

  if (server_stats(url, &after) != 0) {
    pass = 0;
    after = before;
  } else if (pass && after.requests - before.requests != requests) {
    fprintf(stderr,
            "threads: the server counted %ld requests, the threads "
            "made %ld\n",
            (long)(after.requests - before.requests), (long)requests);
    pass = 0;
  }

  init_count = global_init_calls();
  if (init_count != 1) {
    fprintf(stderr,
            "threads: curl_global_init was called %ld times, "
            "expected exactly 1\n",
            init_count);
    pass = 0;
  }

  printf(
      "threads: %d/%d threads ok%s, %d iterations each, %ld calls in %ld "
      "requests on %ld connections, curl_global_init called %ld time%s: "
      "%s\n",
      ok_threads, NTHREADS * rounds,
      rounds > 1 ? " (in rounds of " STRINGIFY(NTHREADS) ")" : "", ITERATIONS,
      (long)calls, (long)(after.requests - before.requests),
      (long)(after.connections - before.connections), init_count,
      init_count == 1 ? "" : "s", pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}
