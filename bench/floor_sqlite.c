/*
 * bench/floor_sqlite.c -- the floor of a first sync's SQLite part: the rows of a synced
 * database written again into a new one by C alone, as osvi.sync writes them (same schema,
 * same pragmas, the same upsert, a transaction per 20,000 rows), with no Lua, no decoding
 * and no network. Whatever osvi.sync does, its writes cannot cost less than this.
 *
 *   cc -O2 -o floor_sqlite bench/floor_sqlite.c -lsqlite3
 *   ./floor_sqlite SYNCED.sqlite NEW.sqlite
 *
 * Prints "rows N wall S cpu S": the time from the first row to the connection closed (its
 * checkpoint included), and the process's CPU time over the same span. The rows are read
 * into memory first, in the order of the synced file, and that is not counted.
 * bench/sync.lua runs it.
 */
#define _POSIX_C_SOURCE 200809L
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double clock_of(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(sqlite3 *db, const char *what) {
  fprintf(stderr, "floor_sqlite: %s: %s\n", what,
          db ? sqlite3_errmsg(db) : "out of memory");
  exit(1);
}

static void run(sqlite3 *db, const char *sql) {
  char *err = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
    fprintf(stderr, "floor_sqlite: %s: %s\n", sql, err ? err : "?");
    exit(1);
  }
}

/* a growing string */
typedef struct {
  char *p;
  size_t n, cap;
} buf;

static void put(buf *b, const char *s) {
  size_t k = strlen(s);
  if (b->n + k + 1 > b->cap) {
    b->cap = (b->n + k + 1) * 2;
    b->p = realloc(b->p, b->cap);
    if (!b->p) die(NULL, "realloc");
  }
  memcpy(b->p + b->n, s, k + 1);
  b->n += k;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: floor_sqlite SYNCED.sqlite NEW.sqlite\n");
    return 2;
  }
  sqlite3 *src, *dst;
  sqlite3_stmt *st;
  if (sqlite3_open_v2(argv[1], &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
    die(src, argv[1]);

  /* the schema of calls and its indexes, as osvi.sync created them */
  buf schema = {0}, cols = {0}, marks = {0}, sets = {0}, diffs = {0};
  if (sqlite3_prepare_v2(
          src,
          "SELECT sql FROM sqlite_master WHERE tbl_name = 'calls' AND sql IS NOT NULL "
          "ORDER BY type DESC",
          -1, &st, NULL) != SQLITE_OK)
    die(src, "schema");
  while (sqlite3_step(st) == SQLITE_ROW) {
    put(&schema, (const char *)sqlite3_column_text(st, 0));
    put(&schema, ";\n");
  }
  sqlite3_finalize(st);

  /* the upsert of osvi.sync (Run:upsert_sql), one row per statement */
  if (sqlite3_prepare_v2(
          src, "SELECT name FROM pragma_table_info('calls') ORDER BY cid", -1,
          &st, NULL) != SQLITE_OK)
    die(src, "columns");
  int ncol = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    const char *c = (const char *)sqlite3_column_text(st, 0);
    put(&cols, ncol ? ", " : "");
    put(&cols, c);
    put(&marks, ncol ? ", ?" : "?");
    if (ncol > 0) {
      put(&sets, ncol > 1 ? ", " : "");
      put(&sets, c);
      put(&sets, " = excluded.");
      put(&sets, c);
      if (strcmp(c, "synced_at") != 0) {
        put(&diffs, ncol > 1 ? " OR " : "");
        put(&diffs, "calls.");
        put(&diffs, c);
        put(&diffs, " IS NOT excluded.");
        put(&diffs, c);
      }
    }
    ncol++;
  }
  sqlite3_finalize(st);
  if (ncol == 0) die(src, "no table calls");
  buf upsert = {0};
  put(&upsert, "INSERT INTO calls (");
  put(&upsert, cols.p);
  put(&upsert, ") VALUES (");
  put(&upsert, marks.p);
  put(&upsert, ") ON CONFLICT (call_id) DO UPDATE SET ");
  put(&upsert, sets.p);
  put(&upsert, " WHERE ");
  put(&upsert, diffs.p);

  /* the rows, in memory */
  size_t nrows = 0, cap = 0;
  sqlite3_value **vals = NULL;
  buf sel = {0};
  put(&sel, "SELECT ");
  put(&sel, cols.p);
  put(&sel, " FROM calls ORDER BY rowid");
  if (sqlite3_prepare_v2(src, sel.p, -1, &st, NULL) != SQLITE_OK)
    die(src, "select");
  while (sqlite3_step(st) == SQLITE_ROW) {
    if ((nrows + 1) * (size_t)ncol > cap) {
      cap = cap ? cap * 2 : (size_t)ncol * 1024;
      vals = realloc(vals, cap * sizeof *vals);
      if (!vals) die(NULL, "realloc");
    }
    for (int i = 0; i < ncol; i++) {
      vals[nrows * (size_t)ncol + (size_t)i] =
          sqlite3_value_dup(sqlite3_column_value(st, i));
    }
    nrows++;
  }
  sqlite3_finalize(st);
  sqlite3_close(src);

  remove(argv[2]);
  buf side = {0};
  put(&side, argv[2]);
  put(&side, "-wal");
  remove(side.p);
  side.n = 0;
  put(&side, argv[2]);
  put(&side, "-shm");
  remove(side.p);
  if (sqlite3_open(argv[2], &dst) != SQLITE_OK) die(dst, argv[2]);
  /* the pragmas of osvi.sync's M.open */
  run(dst,
      "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; "
      "PRAGMA cache_size = -32768; PRAGMA wal_autocheckpoint = 16384");
  run(dst, "BEGIN");
  run(dst, schema.p);
  run(dst, "COMMIT");
  if (sqlite3_prepare_v2(dst, upsert.p, -1, &st, NULL) != SQLITE_OK)
    die(dst, "upsert");

  double wall = clock_of(CLOCK_MONOTONIC),
         cpu = clock_of(CLOCK_PROCESS_CPUTIME_ID);
  run(dst, "BEGIN");
  for (size_t r = 0; r < nrows; r++) {
    for (int i = 0; i < ncol; i++)
      sqlite3_bind_value(st, i + 1, vals[r * (size_t)ncol + (size_t)i]);
    if (sqlite3_step(st) != SQLITE_DONE) die(dst, "step");
    sqlite3_reset(st);
    if ((r + 1) % 20000 == 0) {
      run(dst, "COMMIT");
      run(dst, "BEGIN");
    }
  }
  run(dst, "COMMIT");
  sqlite3_finalize(st);
  if (sqlite3_close(dst) != SQLITE_OK) die(dst, "close");
  wall = clock_of(CLOCK_MONOTONIC) - wall;
  cpu = clock_of(CLOCK_PROCESS_CPUTIME_ID) - cpu;
  printf("rows %zu wall %.3f cpu %.3f\n", nrows, wall, cpu);

  for (size_t i = 0; i < nrows * (size_t)ncol; i++) sqlite3_value_free(vals[i]);
  free(vals);
  free(schema.p);
  free(cols.p);
  free(marks.p);
  free(sets.p);
  free(diffs.p);
  free(upsert.p);
  free(sel.p);
  free(side.p);
  return 0;
}
