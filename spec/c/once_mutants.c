/*
** spec/c/once_mutants.c — for the self-tests of spec/c/threads.c only.
**
** check.mk builds "mutant" osvi.so files from the unchanged sources with
** this file linked in and pthread_once renamed by a -D flag:
**
**   -Dpthread_once=osvi_check_once_always   (build/tsan-mutant)
**     the routine runs every time: osvi calls curl_global_init on every
**     luaopen_osvi, and the harness's count must catch it;
**   -Dpthread_once=osvi_check_naive_once    (build/tsan-racy)
**     an unsynchronised check-then-set flag, the classic hand-rolled "once":
**     ThreadSanitizer must report the data race on it.
*/
#include <pthread.h>

int osvi_check_once_always(pthread_once_t *once, void (*routine)(void));
int osvi_check_naive_once(pthread_once_t *once, void (*routine)(void));

int osvi_check_once_always(pthread_once_t *once, void (*routine)(void)) {
  (void)once;
  routine();
  return 0;
}

int osvi_check_naive_once(pthread_once_t *once, void (*routine)(void)) {
  static int done; /* read and written by every thread without a lock */
  (void)once;
  if (!done) {
    done = 1;
    routine();
  }
  return 0;
}
