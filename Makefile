# osvi — build, test and demo. `make test` and `make demo` install what they
# need from Debian's archive when it is missing (as root), then run.

# Another Lua builds into a directory of its own (see "Lua versions" in the
# README), e.g. make LUA_VERSION=5.3 BUILD=build/lua5.3 -> build/lua5.3/osvi.so;
# LuaJIT: make LUA_VERSION=5.1 LUA_INCDIR=/usr/include/luajit-2.1 LUA=luajit
# BUILD=build/luajit. Lua 5.4 builds ./osvi.so, its objects in src/.
LUA         ?= lua5.4
LUA_VERSION ?= 5.4
LUA_INCDIR  ?= /usr/include/lua$(LUA_VERSION)
BUILD       ?= $(if $(filter 5.4,$(LUA_VERSION)),,build/$(notdir $(patsubst %/,%,$(LUA_INCDIR))))
LUA_LIBDIR  ?= /usr/lib/x86_64-linux-gnu
INST_LIBDIR ?= /usr/local/lib/lua/$(LUA_VERSION)
# resty.osvi (lua/resty/): OpenResty's LuaJIT reads /usr/local/share/lua/5.1;
# osvi.sync (lua/osvi/: osvi-calls sync) goes there too
INST_LUADIR ?= /usr/local/share/lua/$(LUA_VERSION)
CURL_CFLAGS ?= $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS   ?= $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)

# ensure_pkgs (installs what is missing) and OSVI_WARN (the warning flags)
include mk/pkgs.mk mk/warn.mk

CC      ?= cc
WARN    = $(OSVI_WARN)
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC $(WARN) $(CFLAGS) \
          -I$(LUA_INCDIR) $(CURL_CFLAGS)
LIBFLAG ?= -shared
LIBS    = $(CURL_LIBS) -lpthread -lm

SRC = src/osvi.c src/client.c src/cursor.c src/core.c src/transport.c src/query.c \
      src/http.c src/decode.c src/error.c src/time.c
HDR = src/osvi.h src/compat.h src/curl_check.h
# the module and its objects: ./osvi.so and src/*.o, or under $(BUILD)
SO  = $(if $(BUILD),$(BUILD)/osvi.so,osvi.so)
OBJ = $(if $(BUILD),$(patsubst src/%.c,$(BUILD)/%.o,$(SRC)),$(SRC:.c=.o))

# Debian packages, by purpose
PKGS_BUILD = gcc make pkg-config lua5.4 liblua5.4-dev libcurl4-openssl-dev lua-cjson
PKGS_TEST  = $(PKGS_BUILD) lua-socket lua-busted openssl procps binutils curl lua-posix valgrind lua-cqueues lua-luv \
             nginx libnginx-mod-http-lua luajit2 libluajit2-5.1-dev \
             lua-dbi-sqlite3 lua-dbi-postgresql postgresql
PKGS_DEMO  = $(PKGS_BUILD) lua-socket

PORT ?= 0
CALLS ?= 300

.PHONY: all install test demo server deps-build deps-test deps-demo clean

all: $(SO)

$(SO): $(OBJ)
	$(CC) $(LIBFLAG) -o $@ $(OBJ) $(LDFLAGS) $(LIBS)

src/%.o: src/%.c $(HDR)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

ifneq ($(BUILD),)
$(BUILD)/%.o: src/%.c $(HDR)
	@mkdir -p $(BUILD)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<
endif

INST_BINDIR ?= /usr/local/bin

install: $(SO)
	install -d $(DESTDIR)$(INST_LIBDIR) $(DESTDIR)$(INST_BINDIR)
	install -m 0755 $(SO) $(DESTDIR)$(INST_LIBDIR)/osvi.so
	install -m 0755 bin/osvi-calls $(DESTDIR)$(INST_BINDIR)/osvi-calls
	install -d $(DESTDIR)$(INST_LUADIR)/resty/osvi
	install -m 0644 lua/resty/osvi.lua $(DESTDIR)$(INST_LUADIR)/resty/osvi.lua
	install -m 0644 lua/resty/osvi/http.lua $(DESTDIR)$(INST_LUADIR)/resty/osvi/http.lua
	install -d $(DESTDIR)$(INST_LUADIR)/osvi
	install -m 0644 lua/osvi/sync.lua lua/osvi/sync_cli.lua $(DESTDIR)$(INST_LUADIR)/osvi/

# Packages are installed only when missing (apt-get needs root): ensure_pkgs,
# in mk/pkgs.mk.
deps-build:
	$(call ensure_pkgs,$(PKGS_BUILD))
deps-test:
	$(call ensure_pkgs,$(PKGS_TEST))
deps-demo:
	$(call ensure_pkgs,$(PKGS_DEMO))

test: deps-test
	$(MAKE) all
	@# resty.osvi's spec runs nginx's Lua module (OpenResty's LuaJIT) with this build
	$(MAKE) --no-print-directory $(VERSION_ARGS_luajit) BUILD=build/luajit all
	sh spec/run.sh

demo: deps-demo
	$(MAKE) all
	sh examples/demo.sh

server: deps-demo
	$(LUA) spec/support/server.lua --port $(PORT) --calls $(CALLS)

# --- the whole spec under Lua 5.3, 5.1 and LuaJIT 2.1 -----------------------
# make test-lua5.3, test-lua5.1, test-luajit: one of them (build/<name>/osvi.so);
# make test-versions: all three, then "N passed, N failed" for them together.
# The local server stays on Lua 5.4 where the spec runs on 5.1 or LuaJIT.
TEST_VERSIONS = lua5.3 lua5.1 luajit
VERSION_ARGS_lua5.3 = LUA_VERSION=5.3 LUA=lua5.3
VERSION_ARGS_lua5.1 = LUA_VERSION=5.1 LUA=lua5.1
VERSION_ARGS_luajit = LUA_VERSION=5.1 LUA_INCDIR=/usr/include/luajit-2.1 LUA=luajit
VERSION_PKGS_lua5.3 = lua5.3 liblua5.3-dev
VERSION_PKGS_lua5.1 = lua5.1 liblua5.1-0-dev
# OpenResty's LuaJIT 2.1 (Debian's luajit2): the one Debian's nginx Lua
# module uses, so the OpenResty example and these specs can share a machine
# (Debian's luajit and libluajit-5.1-dev would remove libnginx-mod-http-lua)
VERSION_PKGS_luajit = luajit2 libluajit2-5.1-dev

.PHONY: test-versions $(addprefix test-,$(TEST_VERSIONS))
$(addprefix test-,$(TEST_VERSIONS)): test-%: deps-test
	$(call ensure_pkgs,$(VERSION_PKGS_$*))
	$(MAKE) --no-print-directory $(VERSION_ARGS_$*) BUILD=build/$* all
	LUA=$(patsubst LUA=%,%,$(filter LUA=%,$(VERSION_ARGS_$*))) \
	OSVI_CPATH='build/$*/?.so' sh spec/run.sh

test-versions: deps-test
	$(call ensure_pkgs,$(foreach v,$(TEST_VERSIONS),$(VERSION_PKGS_$(v))))
	@log=$$(mktemp); passed=0; failed=0; summary=""; \
	for v in $(TEST_VERSIONS); do \
	  echo "== $$v"; \
	  $(MAKE) --no-print-directory test-$$v 2>&1 | tee "$$log"; \
	  line=$$(grep -E '^[0-9]+ passed, [0-9]+ failed$$' "$$log" | tail -n 1); \
	  [ -n "$$line" ] || line="0 passed, 1 failed"; \
	  p=$${line%% passed*}; f=$${line#*, }; f=$${f%% failed*}; \
	  passed=$$((passed + p)); failed=$$((failed + f)); \
	  summary="$$summary$$v: $$line\n"; \
	done; \
	rm -f "$$log"; printf "$$summary"; \
	echo "$$passed passed, $$failed failed"; [ "$$failed" -eq 0 ]

# --- make check: the whole spec under ASan+UBSan and under valgrind -------
SAN_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
            -fno-omit-frame-pointer
ASAN_DIR  = build/check-asan
ASAN_OBJ  = $(patsubst src/%.c,$(ASAN_DIR)/%.o,$(SRC))
PKGS_CHECK = $(PKGS_TEST) valgrind clang clang-14 libclang-rt-14-dev luarocks

.PHONY: check check-asan check-valgrind deps-check bench
deps-check:
	$(call ensure_pkgs,$(PKGS_CHECK))

$(ASAN_DIR)/%.o: src/%.c $(HDR)
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
# the source rock packed, served from a local directory and installed with
# luarocks into fresh trees for Lua 5.4 and LuaJIT, then used from them
# (offline: spec/luarocks.sh), and the local server's own smoke test
.PHONY: check-luarocks check-server
check-luarocks: deps-test
	$(call ensure_pkgs,luarocks git zip unzip $(VERSION_PKGS_luajit))
	sh spec/luarocks.sh
check-server: deps-test
	bash spec/support/server_smoke.sh

check: deps-check
	$(MAKE) check-asan check-valgrind check-threads check-oom check-c-selftest fuzz

clean:
	rm -f $(SRC:.c=.o) osvi.so
	rm -rf build

# make lint: clang-format, cppcheck, clang-tidy and luacheck (lint.mk)
include lint.mk

# make bench: every contender on the same workloads (bench/README.md)
include bench/bench.mk
