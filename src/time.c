/*
** Dates and timestamps: the forms the API accepts, read exactly.
**   YYYY-MM-DD                                 a whole day in IST (+05:30)
**   YYYY-MM-DDThh:mm:ss[.f...](Z|+hh:mm|-hh:mm)  one instant
** Calendar arithmetic is done here (days_from_civil), not with mktime/timegm,
** so the result does not depend on the process's TZ or locale.
*/
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "osvi.h"

double osvi_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t days_from_civil(int64_t y, int m, int d) {
  int64_t era, yoe, doy, doe;
  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int *y, int *m, int *d) {
  int64_t era, doe, yoe, doy, mp;
  z += 719468;
  era = (z >= 0 ? z : z - 146096) / 146097;
  doe = z - era * 146097;
  yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = (int)(yoe + era * 400 + (*m <= 2));
}

static int is_leap(int y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m) {
  static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : dm[m - 1];
}

/* Reads exactly n digits at s; -1 when any is not a digit. */
static int digits(const char *s, int n) {
  int v = 0, i;
  for (i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (s[i] - '0');
  }
  return v;
}

const char *osvi_time_parse(const char *s, size_t len, int64_t *lo_ms,
                            int64_t *hi_ms) {
  int y, mo, d, h, mi, sec, ms = 0, off = 0;
  size_t i;
  int64_t day, t;

  if (len < 10 || s[4] != '-' || s[7] != '-')
    return "expected YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with Z or +hh:mm";
  y = digits(s, 4);
  mo = digits(s + 5, 2);
  d = digits(s + 8, 2);
  if (y < 1 || mo < 1 || mo > 12 || d < 1)
    return "not a valid date (YYYY-MM-DD)";
  if (d > days_in_month(y, mo)) return "no such day in that month";
  day = days_from_civil(y, mo, d);
  if (len == 10) {
    *lo_ms = (day * 86400 - OSVI_IST_OFFSET) * 1000;
    *hi_ms = *lo_ms + (int64_t)86400 * 1000 - 1;
    return NULL;
  }
  if (len < 19 || (s[10] != 'T' && s[10] != 't') || s[13] != ':' ||
      s[16] != ':')
    return "expected YYYY-MM-DDThh:mm:ss with Z or +hh:mm after the date";
  h = digits(s + 11, 2);
  mi = digits(s + 14, 2);
  sec = digits(s + 17, 2);
  if (h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 || sec > 59)
    return "not a valid time of day (hh:mm:ss)";
  i = 19;
  if (i < len && s[i] == '.') { /* fraction: 1 to 9 digits, ms kept */
    size_t start = ++i;
    int scale = 100;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
      ms += (s[i] - '0') * scale;
      scale /= 10;
      i++;
    }
    if (i == start || i - start > 9)
      return "a fraction of a second takes 1 to 9 digits";
  }
  if (i == len) return "a timestamp needs an offset: Z or +hh:mm";
  if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == len) {
    off = 0;
  } else if ((s[i] == '+' || s[i] == '-') && i + 6 == len && s[i + 3] == ':') {
    int oh = digits(s + i + 1, 2), om = digits(s + i + 4, 2);
    if (oh < 0 || oh > 23 || om < 0 || om > 59)
      return "not a valid offset (+hh:mm)";
    off = (oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
  } else {
    return "a timestamp ends with Z or +hh:mm";
  }
  t = day * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + sec - off;
  *lo_ms = *hi_ms = t * 1000 + ms;
  return NULL;
}

int osvi_time_format_ist(int64_t t, char out[32]) {
  int y, m, d;
  int64_t local, days, rem;
  if (t < -62135596800LL + OSVI_IST_OFFSET ||
      t > 253402300799LL - OSVI_IST_OFFSET)
    return -1;
  local = t + OSVI_IST_OFFSET;
  days = local >= 0 ? local / 86400 : -((-local + 86399) / 86400);
  rem = local - days * 86400;
  civil_from_days(days, &y, &m, &d);
  /* the modulos only tell the compiler the widths: every field is in range */
  (void)snprintf(out, 32, "%04u-%02u-%02uT%02u:%02u:%02u+05:30",
                 (unsigned)y % 10000u, (unsigned)m % 100u, (unsigned)d % 100u,
                 (unsigned)(rem / 3600) % 100u, (unsigned)(rem / 60 % 60),
                 (unsigned)(rem % 60));
  return 0;
}

/* floor division for a possibly negative millisecond count */
static int64_t floor_div_1000(int64_t ms) {
  return ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
}

/*
** osvi.time(s) -> integer epoch seconds. nil gives nil, so that
** osvi.time(call.call_picked_at) reads naturally for a call never picked up.
*/
static int l_time(lua_State *L) {
  size_t len;
  const char *s, *err;
  int64_t lo, hi;
  if (lua_isnoneornil(L, 1)) {
    lua_pushnil(L);
    return 1;
  }
  if (lua_type(L, 1) != LUA_TSTRING)
    return osvi_usage_error(L, NULL,
                            "osvi.time: expected an ISO-8601 string, got %s",
                            luaL_typename(L, 1));
  s = lua_tolstring(L, 1, &len);
  err = osvi_time_parse(s, len, &lo, &hi);
  if (err != NULL)
    return osvi_usage_error(L, NULL, "osvi.time: '%s': %s", s, err);
  lua_pushinteger(L, (lua_Integer)floor_div_1000(lo));
  return 1;
}

int osvi_time_open(lua_State *L) {
  lua_pushcfunction(L, l_time);
  lua_setfield(L, -2, "time");
  return 0;
}
