/*
** osvi — libcurl's headers, or, where they are missing, an error that says
** which package has them (the compiler's own "No such file" does not).
** Found through the compiler's default include path (on Debian and Ubuntu
** that includes /usr/include/x86_64-linux-gnu, where curl/curl.h is), or
** through -I (the Makefile adds `pkg-config --cflags libcurl`).
*/
#ifndef OSVI_CURL_CHECK_H
#define OSVI_CURL_CHECK_H

#if defined(__has_include)
#if !__has_include(<curl/curl.h>)
#error \
    "osvi needs libcurl's headers (curl/curl.h): install libcurl4-openssl-dev on Debian and Ubuntu, libcurl-devel on Fedora, RHEL and openSUSE, curl-dev on Alpine; or add -I<dir> to CFLAGS"
#endif
#endif

#include <curl/curl.h>

#endif
