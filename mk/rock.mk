# mk/rock.mk -- the build that LuaRocks runs for `luarocks make` and
# `luarocks install` (build.type = "make" in rockspec/*.rockspec):
#
#   make -f mk/rock.mk CC=... CFLAGS=... LIBFLAG=... LUA_INCDIR=...
#   make -f mk/rock.mk install INST_LIBDIR=...
#
# It builds build/rock/osvi.so (never ./osvi.so or src/*.o, which are the
# Makefile's). libcurl's flags come from pkg-config, else curl-config, else
# the compiler's default paths (on Debian and Ubuntu they hold the multiarch
# /usr/include/x86_64-linux-gnu/curl/curl.h that LuaRocks' own search misses);
# CURL_CFLAGS and CURL_LIBS, in the environment, replace them. Without
# libcurl's headers or its library, it stops first, saying which package to
# install.

CC         ?= cc
CFLAGS     ?= -O2 -fPIC
LIBFLAG    ?= -shared
LUA_INCDIR ?= /usr/include/lua5.4
CURL_CFLAGS ?= $(shell pkg-config --cflags libcurl 2>/dev/null || curl-config --cflags 2>/dev/null)
CURL_LIBS   ?= $(shell pkg-config --libs libcurl 2>/dev/null || curl-config --libs 2>/dev/null || echo -lcurl)
INST_LIBDIR ?= /usr/local/lib/lua/5.4

ROCK_DIR = build/rock
ROCK_SRC = $(wildcard src/*.c)
ROCK_OBJ = $(ROCK_SRC:src/%.c=$(ROCK_DIR)/%.o)
ROCK_CFLAGS = $(CFLAGS) -D_POSIX_C_SOURCE=200809L -I$(LUA_INCDIR) $(CURL_CFLAGS)

CURL_PACKAGES = libcurl4-openssl-dev on Debian and Ubuntu, libcurl-devel on \
  Fedora, RHEL and openSUSE, curl-dev on Alpine (or set CURL_CFLAGS and \
  CURL_LIBS)

.PHONY: all install check-curl

all: $(ROCK_DIR)/osvi.so

# a program that includes curl.h and links libcurl: the headers and the
# library are both there, or the build stops here with what to install
check-curl:
	@mkdir -p $(ROCK_DIR)
	@printf '#include <curl/curl.h>\nint main(void) { return (int)curl_global_init(CURL_GLOBAL_DEFAULT); }\n' \
	  >$(ROCK_DIR)/curl-check.c
	@$(CC) $(CURL_CFLAGS) -o $(ROCK_DIR)/curl-check $(ROCK_DIR)/curl-check.c $(CURL_LIBS) \
	  >$(ROCK_DIR)/curl-check.log 2>&1 || { \
	  echo "osvi needs libcurl and its headers, which the compiler cannot find:" >&2; \
	  echo "  install $(CURL_PACKAGES)" >&2; \
	  sed 's/^/  | /' $(ROCK_DIR)/curl-check.log >&2; exit 1; }

$(ROCK_DIR)/%.o: src/%.c $(wildcard src/*.h) | check-curl
	$(CC) $(ROCK_CFLAGS) -c -o $@ $<

$(ROCK_DIR)/osvi.so: $(ROCK_OBJ)
	$(CC) $(LIBFLAG) -o $@ $(ROCK_OBJ) $(CURL_LIBS) -lpthread -lm

install: $(ROCK_DIR)/osvi.so
	mkdir -p $(INST_LIBDIR)
	cp $(ROCK_DIR)/osvi.so $(INST_LIBDIR)/osvi.so
