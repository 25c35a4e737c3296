# osvi — build, test and demo. `make test` and `make demo` install what they
# need from Debian's archive when it is missing (as root), then run.

LUA         ?= lua5.4
LUA_VERSION ?= 5.4
LUA_INCDIR  ?= /usr/include/lua$(LUA_VERSION)
LUA_LIBDIR  ?= /usr/lib/x86_64-linux-gnu
INST_LIBDIR ?= /usr/local/lib/lua/$(LUA_VERSION)
CURL_CFLAGS ?= $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS   ?= $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)

CC      ?= cc
WARN    = -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes \
          -Wpointer-arith -Wcast-qual -pedantic
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC $(WARN) $(CFLAGS) \
          -I$(LUA_INCDIR) $(CURL_CFLAGS)
LIBFLAG ?= -shared
LIBS    = $(CURL_LIBS) -lpthread -lm

SRC = src/osvi.c src/client.c src/cursor.c src/query.c src/http.c \
      src/decode.c src/error.c src/time.c
OBJ = $(SRC:.c=.o)

# Debian packages, by purpose
PKGS_BUILD = gcc make pkg-config lua5.4 liblua5.4-dev libcurl4-openssl-dev lua-cjson
PKGS_TEST  = $(PKGS_BUILD) lua-socket lua-busted
PKGS_DEMO  = $(PKGS_BUILD) lua-socket

PORT ?= 0
CALLS ?= 300

.PHONY: all install test demo server deps-build deps-test deps-demo clean

all: osvi.so

osvi.so: $(OBJ)
	$(CC) $(LIBFLAG) -o $@ $(OBJ) $(LDFLAGS) $(LIBS)

src/%.o: src/%.c src/osvi.h
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

install: osvi.so
	install -d $(DESTDIR)$(INST_LIBDIR)
	install -m 0755 osvi.so $(DESTDIR)$(INST_LIBDIR)/osvi.so

# Install only the packages that are missing (apt-get needs root).
define ensure_pkgs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps-build:
	$(call ensure_pkgs,$(PKGS_BUILD))
deps-test:
	$(call ensure_pkgs,$(PKGS_TEST))
deps-demo:
	$(call ensure_pkgs,$(PKGS_DEMO))

test: deps-test
	$(MAKE) all
	sh spec/run.sh

demo: deps-demo
	$(MAKE) all
	sh examples/demo.sh

server: deps-demo
	$(LUA) spec/support/server.lua --port $(PORT) --calls $(CALLS)

clean:
	rm -f $(OBJ) osvi.so
