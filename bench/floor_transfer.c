/*
** floor_transfer BASE_URL TOKEN PAGES PER_PAGE IN_FLIGHT [CA_FILE]
**
** The transfer floor: GET /v1/calls pages 1..PAGES with libcurl, as tightly as C allows, and
** throw the bodies away. IN_FLIGHT transfers run at once through the multi interface (1: one
** after the other); every easy handle is reused, so connections stay alive between pages.
** Checks that every answer is a 200 with a body; prints `pages=N bytes=B` and exits 0, or
** says what went wrong and exits 1.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

static char base[1024], *ca_file;
static struct curl_slist *headers;
static long per_page;

static size_t discard(char *data, size_t size, size_t n, void *total) {
  (void)data;
  *(size_t *)total += size * n;
  return size * n;
}

/* Points handle `h` at `page` and adds it to the multi handle. */
static void start(CURLM *m, CURL *h, long page, size_t *bytes) {
  char url[1200];
  /* the query in osvi's order: the server caches responses by their raw query string */
  snprintf(url, sizeof url, "%s/v1/calls?page=%ld&per_page=%ld", base, page,
           per_page);
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, bytes);
  curl_easy_setopt(h, CURLOPT_PRIVATE, (char *)bytes);
  if (ca_file) curl_easy_setopt(h, CURLOPT_CAINFO, ca_file);
  curl_multi_add_handle(m, h);
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(
        stderr,
        "usage: floor_transfer BASE_URL TOKEN PAGES PER_PAGE IN_FLIGHT [CA_FILE]\n");
    return 2;
  }
  snprintf(base, sizeof base, "%s", argv[1]);
  char token[256];
  snprintf(token, sizeof token, "API-Token: %s", argv[2]);
  long pages = atol(argv[3]), in_flight = atol(argv[5]);
  per_page = atol(argv[4]);
  ca_file = argc > 6 ? argv[6] : NULL;
  if (pages < 1 || per_page < 1 || in_flight < 1) return 2;

  curl_global_init(CURL_GLOBAL_DEFAULT);
  headers = curl_slist_append(NULL, token);
  headers = curl_slist_append(headers, "Accept: application/json");
  CURLM *m = curl_multi_init();
  CURL **handles = calloc(in_flight, sizeof *handles);
  size_t *bytes = calloc(in_flight, sizeof *bytes), total = 0;
  long next = 1, done = 0;
  for (long i = 0; i < in_flight && next <= pages; i++) {
    handles[i] = curl_easy_init();
    start(m, handles[i], next++, &bytes[i]);
  }
  while (done < pages) {
    int running, left;
    curl_multi_perform(m, &running);
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(m, &left))) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL *h = msg->easy_handle;
      long status = 0;
      size_t *got;
      curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
      curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&got);
      if (msg->data.result != CURLE_OK || status != 200 || *got == 0) {
        fprintf(stderr, "floor_transfer: %s, HTTP %ld, %zu bytes\n",
                curl_easy_strerror(msg->data.result), status, *got);
        return 1;
      }
      total += *got;
      *got = 0;
      done++;
      curl_multi_remove_handle(m, h);
      if (next <= pages)
        start(m, h, next++, got); /* same handle: its connection stays alive */
    }
    if (done < pages) curl_multi_poll(m, NULL, 0, 1000, NULL);
  }
  printf("pages=%ld bytes=%zu\n", done, total);
  for (long i = 0; i < in_flight; i++)
    if (handles[i]) curl_easy_cleanup(handles[i]);
  curl_multi_cleanup(m);
  curl_slist_free_all(headers);
  curl_global_cleanup();
  return 0;
}
