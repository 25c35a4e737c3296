/*
** rusage CMD [ARG...] -- run CMD, wait for it, then print on stdout one line
**
**   rusage <wall_s> <user_s> <sys_s> <maxrss_kib> <status>
**
** wall is CLOCK_MONOTONIC from fork to exit; user, sys and maxrss come from wait4(), so they
** cover CMD and the children it waited for (e.g. the curl processes behind io.popen; maxrss
** is then the largest single process). status is the exit code, or 128+signal.
*/
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double seconds(struct timeval tv) {
  return tv.tv_sec + tv.tv_usec / 1e6;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: rusage CMD [ARG...]\n");
    return 2;
  }
  double start = now();
  pid_t pid = fork();
  if (pid < 0) {
    perror("rusage: fork");
    return 2;
  }
  if (pid == 0) {
    execvp(argv[1], argv + 1);
    perror("rusage: exec");
    _exit(127);
  }
  int st;
  struct rusage ru;
  if (wait4(pid, &st, 0, &ru) < 0) {
    perror("rusage: wait4");
    return 2;
  }
  double wall = now() - start;
  int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  printf("rusage %.6f %.6f %.6f %ld %d\n", wall, seconds(ru.ru_utime),
         seconds(ru.ru_stime), ru.ru_maxrss, status);
  return 0;
}
