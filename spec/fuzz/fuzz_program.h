/*
** Reading a fuzz input as a small program, for fuzz_query.c and
** fuzz_options.c: bytes taken one at a time (0 once the input is used up),
** and string values taken from a harness's dictionary, mutated, or raw.
*/
#ifndef OSVI_FUZZ_PROGRAM_H
#define OSVI_FUZZ_PROGRAM_H

#include <stdint.h>
#include <string.h>

#include "lua.h"

/* a string of a dictionary, NUL bytes allowed */
typedef struct {
  const char *s;
  size_t len;
} lstr;

#define FUZZ_MAX_STR 64 /* the longest raw string value of any harness */

typedef struct {
  const uint8_t *p;
  size_t n;
} reader;

static inline unsigned get(reader *r) { /* 0 once the input is used up */
  if (r->n == 0) return 0;
  r->n--;
  return *r->p++;
}

static inline uint64_t get64(reader *r) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < 8; i++) v = (v << 8) | get(r);
  return v;
}

/* Pushes a string value onto L: from dict (ndict entries), a dictionary
** value with one byte replaced, or 0..max raw input bytes (max at most
** FUZZ_MAX_STR). */
static inline void push_dict_string(lua_State *L, reader *r, unsigned how,
                                    const lstr *dict, size_t ndict,
                                    size_t max) {
  switch (how % 4) {
    case 0: /* from the dictionary */
    case 1: {
      const lstr *d = &dict[get(r) % ndict];
      lua_pushlstring(L, d->s, d->len);
      break;
    }
    case 2: { /* a dictionary value with one byte replaced */
      const lstr *d = &dict[get(r) % ndict];
      char buf[64];
      size_t len = d->len < sizeof buf ? d->len : sizeof buf;
      unsigned at = get(r), c = get(r);
      memcpy(buf, d->s, len);
      if (len > 0) buf[at % len] = (char)c;
      lua_pushlstring(L, buf, len);
      break;
    }
    default: { /* raw input bytes */
      size_t len;
      if (max > FUZZ_MAX_STR) max = FUZZ_MAX_STR;
      len = get(r) % (max + 1);
      char buf[FUZZ_MAX_STR];
      size_t i;
      for (i = 0; i < len; i++) buf[i] = (char)get(r);
      lua_pushlstring(L, buf, len);
    }
  }
}

#endif
