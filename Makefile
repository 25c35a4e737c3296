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

SRC = src/osvi.c src/client.c src/cursor.c src/prefetch.c src/query.c \
      src/http.c src/decode.c src/error.c src/time.c
OBJ = $(SRC:.c=.o)

# Debian packages, by purpose
PKGS_BUILD = gcc make pkg-config lua5.4 liblua5.4-dev libcurl4-openssl-dev lua-cjson
PKGS_TEST  = $(PKGS_BUILD) lua-socket lua-busted openssl procps binutils
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

# --- make check: the whole spec under ASan+UBSan and under valgrind -------
SAN_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
            -fno-omit-frame-pointer
ASAN_DIR  = build/check-asan
ASAN_OBJ  = $(patsubst src/%.c,$(ASAN_DIR)/%.o,$(SRC))
PKGS_CHECK = $(PKGS_TEST) valgrind clang clang-14 libclang-rt-14-dev

.PHONY: check check-asan check-valgrind deps-check bench
deps-check:
	$(call ensure_pkgs,$(PKGS_CHECK))

$(ASAN_DIR)/%.o: src/%.c src/osvi.h
	@mkdir -p $(ASAN_DIR)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN_FLAGS) -c -o $@ $<

$(ASAN_DIR)/osvi.so: $(ASAN_OBJ)
	$(CC) $(LIBFLAG) $(SAN_FLAGS) -o $@ $(ASAN_OBJ) $(LIBS)

$(ASAN_DIR)/luahost: spec/c/luahost.c
	@mkdir -p $(ASAN_DIR)
	$(CC) -std=c99 -g -O1 $(SAN_FLAGS) -I$(LUA_INCDIR) -o $@ $< -llua$(LUA_VERSION) -lm

# The interpreter itself carries ASan, so the specs' own shell commands are
# not instrumented; leaks are checked when it exits (busted closes the state).
check-asan: deps-check
	$(MAKE) all $(ASAN_DIR)/osvi.so $(ASAN_DIR)/luahost
	ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LUA=$(ASAN_DIR)/luahost OSVI_CPATH='$(ASAN_DIR)/?.so' sh spec/run.sh

VALGRIND = valgrind --quiet --error-exitcode=99 --leak-check=full \
           --errors-for-leak-kinds=definite --show-leak-kinds=definite

check-valgrind: deps-check
	$(MAKE) all
	OSVI_SPEC_SLACK=10 OSVI_SPEC_WRAPPER="$(VALGRIND)" sh spec/run.sh

# thread (TSan) and out-of-memory (ASan) harnesses; libFuzzer
include spec/c/check.mk
include spec/fuzz/fuzz.mk

# a sub-make, so that the tools deps-check installs are seen by the rules
check: deps-check
	$(MAKE) check-asan check-valgrind check-threads check-oom check-c-selftest fuzz

clean:
	rm -f $(OBJ) osvi.so
	rm -rf build
