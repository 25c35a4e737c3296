/*
** Known findings to tolerate while fuzzing for new ones.
**
** A harness check that matches a finding already reported (listed in
** spec/fuzz/crashes/README) is skipped when the finding's name is in the
** comma-separated environment variable OSVI_FUZZ_ALLOW, e.g.
**   OSVI_FUZZ_ALLOW=errors-holes build/fuzz/fuzz_decode ...
** Unset (the default, and what `make fuzz` uses): every check is strict.
*/
#ifndef OSVI_FUZZ_ALLOW_H
#define OSVI_FUZZ_ALLOW_H

#include <stdlib.h>
#include <string.h>

static int allowed(const char *name) {
  const char *p = getenv("OSVI_FUZZ_ALLOW");
  size_t n = strlen(name);
  while (p != NULL && *p != '\0') {
    if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0')) return 1;
    p = strchr(p, ',');
    if (p != NULL) p++;
  }
  return 0;
}

#endif
