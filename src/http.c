/*
** HTTP with libcurl. This file knows curl and nothing of Lua: its callbacks
** are plain C (append to a capped buffer, read one header), so no Lua error
** can ever jump over curl's frames.
*/
#define _GNU_SOURCE /* dladdr, RTLD_NODELETE */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "osvi.h"

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static const char anchor = 0; /* an address inside this module */

static void global_init(void) {
  Dl_info self;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  /* Keep this module loaded for the life of the process: lua_close would
  ** otherwise unload it with the last state, and the next state to load it
  ** would find a fresh once-flag and initialise libcurl again. */
  if (dladdr(&anchor, &self) && self.dli_fname != NULL)
    /* the handle is kept, never closed, on purpose (that is the point) */
    /* cppcheck-suppress leakReturnValNotUsed */
    (void)dlopen(self.dli_fname, RTLD_NOW | RTLD_NODELETE | RTLD_NOLOAD);
}

/* curl_global_init exactly once per process, however many Lua states load
** the module, one after another or at the same time. It is never undone:
** another state may still use curl. */
void osvi_http_global_init(void) { pthread_once(&global_once, global_init); }

/* Appends to h->body; past max_bytes it flags too_large and returns 0, which
** makes curl stop the transfer with CURLE_WRITE_ERROR. The cap counts the
** bytes handed to us, i.e. after any content decoding. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *ud) {
  osvi_http *h = ud;
  size_t n = size * nmemb;
  if (n > h->max_bytes - h->len || h->len > h->max_bytes) {
    h->too_large = 1;
    return 0;
  }
  if (h->len + n + 1 > h->cap) {
    size_t cap = h->cap ? h->cap : 16384;
    char *p;
    while (cap < h->len + n + 1) cap *= 2;
    p = realloc(h->body, cap);
    if (p == NULL) {
      h->out_of_memory = 1;
      return 0;
    }
    h->body = p;
    h->cap = cap;
  }
  memcpy(h->body + h->len, data, n);
  h->len += n;
  return n;
}

long osvi_http_retry_after(const char *v, size_t len) {
  char buf[64];
  while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' ||
                     v[len - 1] == ' ' || v[len - 1] == '\t'))
    len--;
  while (len > 0 && (*v == ' ' || *v == '\t')) v++, len--;
  if (len == 0 || len >= sizeof buf) return -1;
  memcpy(buf, v, len);
  buf[len] = '\0';
  if (buf[0] >= '0' && buf[0] <= '9') {
    long secs = 0;
    size_t i;
    for (i = 0; i < len; i++) {
      if (buf[i] < '0' || buf[i] > '9') return -1;
      if (secs > 100000000L) return -1; /* absurd: unknown */
      secs = secs * 10 + (buf[i] - '0');
    }
    return secs;
  } else {
    time_t when = curl_getdate(buf, NULL);
    if (when != (time_t)-1) {
      time_t now = time(NULL);
      return when > now ? (long)(when - now) : 0;
    }
  }
  return -1;
}

/* Reads Retry-After into h->retry_after (-1 when absent or garbage). */
static void parse_retry_after(osvi_http *h, const char *v, size_t len) {
  h->retry_after = osvi_http_retry_after(v, len);
}

/* Reads a Content-Length value (a number, or a list of them as some
** servers send, "42, 42"): 1 when every number agrees with *len (or sets
** it, the first time), 0 when they disagree. Not a number at all is left
** to libcurl. */
static int same_length(curl_off_t *len, const char *v, size_t n) {
  size_t i = 0;
  while (i < n) {
    curl_off_t x = 0;
    int digits = 0;
    while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
    while (i < n && v[i] >= '0' && v[i] <= '9' && digits < 18) {
      x = x * 10 + (v[i++] - '0');
      digits++;
    }
    if (digits == 0) break;
    if (*len >= 0 && x != *len) return 0;
    *len = x;
    while (i < n && v[i] != ',') i++;
  }
  return 1;
}

/* Sees every header line of every response (1xx included), as curl hands
** them over, status line and blank line too. It stops the transfer
** (returning 0: CURLE_WRITE_ERROR) on headers that are too large in all,
** or Content-Length headers that disagree: a response that two readers
** could cut differently (RFC 9112, 6.3) is never read. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *ud) {
  osvi_http *h = ud;
  size_t n = size * nmemb;
  static const char name[] = "retry-after:";
  static const char length[] = "content-length:";
  h->header_bytes += n;
  if (h->header_bytes > OSVI_MAX_HEADER_BYTES) {
    h->bad_response = OSVI_HTTP_HEADERS_TOO_LARGE;
    return 0;
  }
  if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) { /* a response begins */
    h->content_length = -1;
    h->headers_complete = 0;
  } else if ((n == 2 && data[0] == '\r') || (n == 1 && data[0] == '\n')) {
    h->headers_complete = 1;
  } else if (n > sizeof name - 1 &&
             strncasecmp(data, name, sizeof name - 1) == 0) {
    parse_retry_after(h, data + sizeof name - 1, n - (sizeof name - 1));
  } else if (n > sizeof length - 1 &&
             strncasecmp(data, length, sizeof length - 1) == 0 &&
             !same_length(&h->content_length, data + sizeof length - 1,
                          n - (sizeof length - 1))) {
    h->bad_response = OSVI_HTTP_TWO_LENGTHS;
    return 0;
  }
  return n;
}

/* Called before each request is sent on a connection, new or reused: also
** before the request libcurl re-sends by itself when a reused keep-alive
** connection turns out dead. So this is where the retry budget is kept. */
#if LIBCURL_VERSION_NUM >= 0x075000
/* NOLINTNEXTLINE(readability-non-const-parameter): curl_prereq_callback */
static int on_prereq(void *ud, char *ip, char *local_ip, int port,
                     int local_port) {
  osvi_http *h = ud;
  (void)ip, (void)local_ip, (void)port, (void)local_port;
  if (h->sent >= h->budget) {
    h->over_budget = 1;
    return CURL_PREREQFUNC_ABORT;
  }
  h->sent++;
  return CURL_PREREQFUNC_OK;
}
#endif

void osvi_http_budget(osvi_http *h, int n) {
  h->sent = 0;
  h->budget = n;
}

#define SETOPT(h, opt, val)                                \
  do {                                                     \
    if (curl_easy_setopt((h)->easy, opt, val) != CURLE_OK) \
      return "libcurl refused option " #opt;               \
  } while (0)

static const char *bind_callbacks(osvi_http *h);

/* Clears the stack copy of the token header; through a volatile pointer, so
** the compiler cannot drop the stores as dead. */
static void wipe(char *p, size_t n) {
  volatile char *v = p;
  while (n-- > 0) *v++ = 0;
}

/* A header value must not end its line early: no CR, LF, NUL or other
** control character (libcurl sends what it is given as it is). */
static int header_safe(const char *v) {
  for (; *v != '\0'; v++)
    if ((unsigned char)*v < 0x20 || *v == 0x7f) return 0;
  return 1;
}

const char *osvi_http_init(osvi_http *h, const osvi_http_options *o) {
  char line[64];
  /* the client checked them already; no header is ever split here */
  if (!header_safe(o->token) || !header_safe(o->user_agent))
    return "a header value has a control character";
  if (strlen(o->token) > sizeof line - sizeof "API-Token: ")
    return "the token is too long";
  h->easy = curl_easy_init();
  if (h->easy == NULL) return "libcurl could not create a handle";
  h->max_bytes = o->max_bytes;
  h->retry_after = -1;

  /* the token header: the only place the token goes */
  (void)snprintf(line, sizeof line, "API-Token: %s", o->token);
  h->headers = curl_slist_append(h->headers, line);
  wipe(line, sizeof line);
  if (h->headers == NULL) return "out of memory";
  if (curl_slist_append(h->headers, "Accept: application/json") == NULL)
    return "out of memory";

  SETOPT(h, CURLOPT_HTTPHEADER, h->headers);
  SETOPT(h, CURLOPT_USERAGENT, o->user_agent);
  SETOPT(h, CURLOPT_HTTPGET, 1L);
  SETOPT(h, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for timeouts */
  SETOPT(h, CURLOPT_TIMEOUT_MS, o->timeout_ms);
  SETOPT(h, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
  SETOPT(h, CURLOPT_TCP_KEEPALIVE, 1L);
  /* a stall detector: a server that drips bytes fails long before the
  ** timeout when the timeout is long */
  SETOPT(h, CURLOPT_LOW_SPEED_LIMIT, 64L);
  SETOPT(h, CURLOPT_LOW_SPEED_TIME, o->stall_s);
  /* fail early on a Content-Length over the cap; the write callback
  ** enforces the cap on the bytes actually received */
  SETOPT(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_bytes);
  /* The token must reach the API and nothing else: no redirects, only
  ** http and https, TLS always verified. */
  SETOPT(h, CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
  SETOPT(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  SETOPT(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  SETOPT(h, CURLOPT_SSL_VERIFYPEER, 1L);
  SETOPT(h, CURLOPT_SSL_VERIFYHOST, 2L);
  if (o->ca_file != NULL) SETOPT(h, CURLOPT_CAINFO, o->ca_file);
  if (o->proxy != NULL) SETOPT(h, CURLOPT_PROXY, o->proxy);
  SETOPT(h, CURLOPT_ACCEPT_ENCODING, ""); /* whatever libcurl can decode */
  return bind_callbacks(h);
}

/* Points the callbacks of h's handle at h itself. */
static const char *bind_callbacks(osvi_http *h) {
  SETOPT(h, CURLOPT_WRITEFUNCTION, on_body);
  SETOPT(h, CURLOPT_WRITEDATA, h);
  SETOPT(h, CURLOPT_HEADERFUNCTION, on_header);
  SETOPT(h, CURLOPT_HEADERDATA, h);
  SETOPT(h, CURLOPT_ERRORBUFFER, h->errbuf);
  SETOPT(h, CURLOPT_PRIVATE, (void *)h);
#if LIBCURL_VERSION_NUM >= 0x075000
  SETOPT(h, CURLOPT_PREREQFUNCTION, on_prereq);
  SETOPT(h, CURLOPT_PREREQDATA, h);
#endif
  h->budget = 1;
  return NULL;
}

const char *osvi_http_dup(osvi_http *h, const osvi_http *from) {
  const struct curl_slist *l;
  h->easy = curl_easy_duphandle(from->easy);
  if (h->easy == NULL) return "libcurl could not copy a handle";
  h->max_bytes = from->max_bytes;
  h->retry_after = -1;
  /* a header list of its own (the copy points at `from`'s), so that no
  ** transfer of h ever reads memory that `from` frees */
  for (l = from->headers; l != NULL; l = l->next) {
    struct curl_slist *n = curl_slist_append(h->headers, l->data);
    if (n == NULL) return "out of memory";
    h->headers = n;
  }
  SETOPT(h, CURLOPT_HTTPHEADER, h->headers);
  return bind_callbacks(h);
}

CURLcode osvi_http_prepare(osvi_http *h, const char *url) {
  h->len = 0;
  h->too_large = 0;
  h->out_of_memory = 0;
  h->retry_after = -1;
  h->over_budget = 0;
  h->header_bytes = 0;
  h->content_length = -1;
  h->headers_complete = 0;
  h->bad_response = OSVI_HTTP_GOOD;
  h->errbuf[0] = '\0';
  return url == NULL ? CURLE_OK : curl_easy_setopt(h->easy, CURLOPT_URL, url);
}

CURLcode osvi_http_get(osvi_http *h, const char *url, long *status) {
  CURLcode rc = osvi_http_prepare(h, url);
  *status = 0;
  if (rc != CURLE_OK) return rc;
  rc = curl_easy_perform(h->easy);
  curl_easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, status);
  return rc;
}

void osvi_http_free(osvi_http *h) {
  if (h->easy != NULL) curl_easy_cleanup(h->easy);
  h->easy = NULL;
  curl_slist_free_all(h->headers);
  h->headers = NULL;
  free(h->body);
  h->body = NULL;
  h->len = h->cap = 0;
}

/* Appends c to out[cap] at *at, keeping room for the final zero; *at
** counts what would have been written. */
static void put(char *out, size_t cap, size_t *at, char c) {
  if (*at + 1 < cap) out[*at] = c;
  (*at)++;
}

/* Where a URL quoted in a message ends (one_url: the whole string is one
** URL, however odd, so that a password with a space is masked whole). */
static int word_end(char c, int one_url) {
  return c == '\0' || (!one_url && (c == ' ' || c == '\t' || c == '\r' ||
                                    c == '\n' || c == '\'' || c == '"' ||
                                    c == '<' || c == '>' || c == '`'));
}

size_t osvi_http_mask(char *out, size_t cap, const char *in, int one_url) {
  size_t at = 0;
  while (*in != '\0') {
    const char *w = in, *end, *auth, *slash, *userinfo_end = NULL, *p;
    if (word_end(*in, one_url)) {
      put(out, cap, &at, *in++);
      continue;
    }
    for (end = w; !word_end(*end, one_url); end++) {}
    /* the authority: after "scheme://" if any, up to the first '/' */
    auth = w;
    for (p = w; p + 3 <= end; p++)
      if (memcmp(p, "://", 3) == 0) {
        auth = p + 3;
        break;
      }
    for (slash = auth;
         slash < end && *slash != '/' && *slash != '?' && *slash != '#';
         slash++)
      if (*slash == '@') userinfo_end = slash; /* the last one */
    for (p = w; p < (userinfo_end ? auth : end); p++) put(out, cap, &at, *p);
    if (userinfo_end != NULL) {
      const char *colon = memchr(auth, ':', (size_t)(userinfo_end - auth));
      if (colon != NULL) /* the user stays, the password goes */
        for (p = auth; p <= colon; p++) put(out, cap, &at, *p);
      for (p = "***"; *p; p++) put(out, cap, &at, *p);
      for (p = userinfo_end; p < end; p++) put(out, cap, &at, *p);
    }
    in = end;
  }
  if (cap > 0) out[at < cap ? at : cap - 1] = '\0';
  return at;
}
