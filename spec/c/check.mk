# spec/c/check.mk — osvi's C harnesses, run under sanitizers.
#
#   make -f spec/c/check.mk check-threads    # 8 threads and states, ThreadSanitizer,
#                                            # curl_global_init exactly once
#   make -f spec/c/check.mk check-oom        # every Lua allocation refused in turn,
#                                            # AddressSanitizer + UBSan + LeakSanitizer
#   make -f spec/c/check.mk check-c          # both
#   make -f spec/c/check.mk check-c-selftest # both checks must FAIL against
#                                            # deliberately broken builds of osvi
#   make -f spec/c/check.mk check-c-clean
#
# Run from the repository root, standalone as above or after
# `include spec/c/check.mk` in the Makefile. Everything is built under build/
# from the unchanged sources in src/ (build/tsan, build/asan and, for the
# self-tests, build/tsan-mutant, build/tsan-racy and build/asan-mutant), with
# the flags of the Makefile's ALL_CFLAGS except its CFLAGS, plus the
# sanitizer's. Each check starts its own local server (spec/c/with-server.sh)
# and stops it after.
#
# Variables are prefixed CHECK_ so that nothing clashes with the Makefile's;
# when included there, the defaults follow its LUA_INCDIR, CURL_CFLAGS and
# CURL_LIBS. The sanitizer builds use clang-14 when it is installed (with
# libclang-rt-14-dev), else cc: set CHECK_CC to choose.

# An included fragment must not become the default goal of the Makefile.
CHECK_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)
# OSVI_WARN, the project's warning flags
include $(dir $(lastword $(MAKEFILE_LIST)))../../mk/warn.mk

CHECK_CC          ?= $(if $(shell command -v clang-14 2>/dev/null),clang-14,cc)
CHECK_LUA         ?= lua5.4
CHECK_LUA_INCDIR  ?= $(or $(LUA_INCDIR),/usr/include/lua5.4)
CHECK_LUA_LIBS    ?= $(or $(shell pkg-config --libs lua5.4 2>/dev/null),-llua5.4)
CHECK_CURL_CFLAGS ?= $(or $(CURL_CFLAGS),$(shell pkg-config --cflags libcurl 2>/dev/null))
CHECK_CURL_LIBS   ?= $(or $(CURL_LIBS),$(shell pkg-config --libs libcurl 2>/dev/null),-lcurl)

CHECK_WARN   ?= $(OSVI_WARN)
# osvi's sources: the Makefile's ALL_CFLAGS without CFLAGS (-O2 -g), which the
# sanitizer flags below replace
CHECK_CFLAGS ?= -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC $(CHECK_WARN) \
                -I$(CHECK_LUA_INCDIR) $(CHECK_CURL_CFLAGS)
CHECK_SO_LIBS ?= $(CHECK_CURL_LIBS) -lpthread -lm
# the harnesses (they define _GNU_SOURCE themselves)
CHECK_HARNESS_CFLAGS ?= -std=c99 $(CHECK_WARN) -I$(CHECK_LUA_INCDIR) $(CHECK_CURL_CFLAGS)

CHECK_TSAN ?= -fsanitize=thread -g -O1
CHECK_ASAN ?= -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer -g -O1

CHECK_TSAN_OPTIONS  ?= halt_on_error=1 second_deadlock_stack=1
CHECK_ASAN_OPTIONS  ?= detect_leaks=1
CHECK_LSAN_OPTIONS  ?= suppressions=$(CURDIR)/spec/c/lsan.supp
CHECK_UBSAN_OPTIONS ?= print_stacktrace=1 halt_on_error=1

# calls the local server serves, and seconds one harness run may take
CHECK_CALLS   ?= 300
CHECK_TIMEOUT ?= 150

CHECK_SRC := $(wildcard src/*.c)
CHECK_HDR := $(wildcard src/*.h)
CHECK_WITH_SERVER := LUA=$(CHECK_LUA) sh spec/c/with-server.sh --calls $(CHECK_CALLS)
# `$(call check_run,PROGRAM,ARGS...)`: runs PROGRAM "$OSVI_TEST_URL" ARGS
# under the server, bounded by CHECK_TIMEOUT
check_run = $(CHECK_WITH_SERVER) sh -c \
  'exec timeout $(CHECK_TIMEOUT) "$$0" "$$OSVI_TEST_URL" "$$@"' $(1) $(2)

# Each build directory keeps the compiler and flags it was built with in
# .flags, rewritten only when they change: everything in it depends on that
# file, so `make ... CHECK_CC=gcc` rebuilds rather than reusing clang objects.
check_stamp = @mkdir -p $(@D); \
  printf '%s\n' '$(1)' | cmp -s - $@ || printf '%s\n' '$(1)' >$@
CHECK_STAMP_COMMON = $(CHECK_CC) | $(CHECK_CFLAGS) | $(CHECK_HARNESS_CFLAGS) | \
  $(CHECK_SO_LIBS) | $(CHECK_LUA_LIBS)
build/tsan/.flags build/tsan-mutant/.flags build/tsan-racy/.flags: check-force
	$(call check_stamp,$(CHECK_STAMP_COMMON) | $(CHECK_TSAN))
build/asan/.flags build/asan-mutant/.flags: check-force
	$(call check_stamp,$(CHECK_STAMP_COMMON) | $(CHECK_ASAN))
.PHONY: check-force
check-force:

# osvi.so per build: objects from src/ with the build's flags
build/tsan/%.o: src/%.c $(CHECK_HDR) build/tsan/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_CFLAGS) $(CHECK_TSAN) -c -o $@ $<
build/asan/%.o: src/%.c $(CHECK_HDR) build/asan/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_CFLAGS) $(CHECK_ASAN) -c -o $@ $<
# the mutants: same sources, one macro that breaks them the way the check
# must notice (see spec/c/once_mutants.c and spec/c/leaky_pushfstring.c)
build/tsan-mutant/%.o: src/%.c $(CHECK_HDR) build/tsan-mutant/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_CFLAGS) $(CHECK_TSAN) \
	  -Dpthread_once=osvi_check_once_always -c -o $@ $<
build/tsan-racy/%.o: src/%.c $(CHECK_HDR) build/tsan-racy/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_CFLAGS) $(CHECK_TSAN) \
	  -Dpthread_once=osvi_check_naive_once -c -o $@ $<
build/asan-mutant/%.o: src/%.c $(CHECK_HDR) build/asan-mutant/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_CFLAGS) $(CHECK_ASAN) \
	  -Dlua_pushfstring=osvi_check_leaky_pushfstring -c -o $@ $<
build/tsan-mutant/once_mutants.o: spec/c/once_mutants.c build/tsan-mutant/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_CFLAGS) $(CHECK_TSAN) -c -o $@ $<
build/tsan-racy/once_mutants.o: spec/c/once_mutants.c build/tsan-racy/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_CFLAGS) $(CHECK_TSAN) -c -o $@ $<
build/asan-mutant/leaky_pushfstring.o: spec/c/leaky_pushfstring.c \
                                       build/asan-mutant/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_CFLAGS) $(CHECK_ASAN) -O0 -c -o $@ $<

build/tsan/osvi.so: $(CHECK_SRC:src/%.c=build/tsan/%.o)
	$(CHECK_CC) -shared $(CHECK_TSAN) -o $@ $^ $(CHECK_SO_LIBS)
build/asan/osvi.so: $(CHECK_SRC:src/%.c=build/asan/%.o)
	$(CHECK_CC) -shared $(CHECK_ASAN) -o $@ $^ $(CHECK_SO_LIBS)
build/tsan-mutant/osvi.so: $(CHECK_SRC:src/%.c=build/tsan-mutant/%.o) \
                           build/tsan-mutant/once_mutants.o
	$(CHECK_CC) -shared $(CHECK_TSAN) -o $@ $^ $(CHECK_SO_LIBS)
build/tsan-racy/osvi.so: $(CHECK_SRC:src/%.c=build/tsan-racy/%.o) \
                         build/tsan-racy/once_mutants.o
	$(CHECK_CC) -shared $(CHECK_TSAN) -o $@ $^ $(CHECK_SO_LIBS)
build/asan-mutant/osvi.so: $(CHECK_SRC:src/%.c=build/asan-mutant/%.o) \
                           build/asan-mutant/leaky_pushfstring.o
	$(CHECK_CC) -shared $(CHECK_ASAN) -o $@ $^ $(CHECK_SO_LIBS)

# The thread harness exports its curl_global_init so that osvi.so's calls
# bind to it, and links libcurl itself so that dlsym(RTLD_NEXT) finds the
# real one.
build/tsan/threads: spec/c/threads.c build/tsan/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_HARNESS_CFLAGS) $(CHECK_TSAN) -o $@ $< \
	  -Wl,--export-dynamic-symbol=curl_global_init \
	  $(CHECK_LUA_LIBS) $(CHECK_CURL_LIBS) -ldl -lpthread
build/asan/oom: spec/c/oom.c build/asan/.flags
	@mkdir -p $(@D)
	$(CHECK_CC) $(CHECK_HARNESS_CFLAGS) $(CHECK_ASAN) -o $@ $< \
	  $(CHECK_LUA_LIBS) -ldl -lm

.PHONY: check-c check-threads check-oom check-c-selftest \
        check-threads-selftest check-oom-selftest check-c-clean

check-c: check-threads check-oom

check-threads: build/tsan/osvi.so build/tsan/threads
	@echo "== check-threads: 8 threads, one lua_State each, under ThreadSanitizer"
	TSAN_OPTIONS="$(CHECK_TSAN_OPTIONS)" \
	  $(call check_run,build/tsan/threads,build/tsan)

# Three passes over n = 1, 2, 3...: refusing the n-th request and Lua's
# retry of it reaches the error paths; --once (the retry let through) shows
# the emergency collection recover; --sticky (everything refused from n on)
# is memory that stays exhausted, error handling and __close included.
CHECK_OOM_ENV = ASAN_OPTIONS="$(CHECK_ASAN_OPTIONS)" \
  LSAN_OPTIONS="$(CHECK_LSAN_OPTIONS)" UBSAN_OPTIONS="$(CHECK_UBSAN_OPTIONS)"
check-oom: build/asan/osvi.so build/asan/oom
	@echo "== check-oom: every allocation refused in turn, under ASan + UBSan + LSan"
	$(CHECK_OOM_ENV) $(call check_run,build/asan/oom,build/asan)
	$(CHECK_OOM_ENV) $(call check_run,build/asan/oom,--once build/asan)
	$(CHECK_OOM_ENV) $(call check_run,build/asan/oom,--sticky build/asan)

# The self-tests pass when the check FAILS, for the expected reason.
check-c-selftest: check-threads-selftest check-oom-selftest

check-threads-selftest: build/tsan-mutant/osvi.so build/tsan-racy/osvi.so \
                        build/tsan/threads
	@echo "== check-threads-selftest: must fail against an osvi.so that calls curl_global_init on every luaopen"
	@TSAN_OPTIONS="$(CHECK_TSAN_OPTIONS)" \
	  $(call check_run,build/tsan/threads,build/tsan-mutant) \
	  >build/tsan-mutant/log 2>&1; rc=$$?; cat build/tsan-mutant/log; \
	if [ $$rc -ne 0 ] && grep -q 'curl_global_init was called 8 times' build/tsan-mutant/log; \
	then echo "check-threads-selftest: PASS (the check failed, as it must)"; \
	else echo "check-threads-selftest: FAIL (exit $$rc)"; exit 1; fi
	@echo "== check-threads-selftest: must fail against an osvi.so whose once-only flag is racy"
	@TSAN_OPTIONS="$(CHECK_TSAN_OPTIONS)" \
	  $(call check_run,build/tsan/threads,build/tsan-racy) \
	  >build/tsan-racy/log 2>&1; rc=$$?; \
	grep -E '^threads:|ThreadSanitizer|#[0-9] .*osvi_check' build/tsan-racy/log; \
	if [ $$rc -ne 0 ] && grep -q 'data race' build/tsan-racy/log && \
	   grep -q 'in osvi_check_naive_once' build/tsan-racy/log; \
	then echo "check-threads-selftest: PASS (ThreadSanitizer caught the race; log: build/tsan-racy/log)"; \
	else echo "check-threads-selftest: FAIL (exit $$rc; log: build/tsan-racy/log)"; exit 1; fi

check-oom-selftest: build/asan-mutant/osvi.so build/asan/oom
	@echo "== check-oom-selftest: must fail against an osvi.so that leaks when a Lua call raises"
	@$(CHECK_OOM_ENV) $(call check_run,build/asan/oom,build/asan-mutant) \
	  >build/asan-mutant/log 2>&1; rc=$$?; \
	grep -E '^oom:|^  +[0-9]+  |LeakSanitizer|SUMMARY|#[0-9] .*osvi_check' build/asan-mutant/log; \
	if [ $$rc -ne 0 ] && grep -q 'in osvi_check_leaky_pushfstring' build/asan-mutant/log; \
	then echo "check-oom-selftest: PASS (the check failed, as it must; log: build/asan-mutant/log)"; \
	else echo "check-oom-selftest: FAIL (exit $$rc; log: build/asan-mutant/log)"; exit 1; fi

check-c-clean:
	rm -rf build/tsan build/asan build/tsan-mutant build/tsan-racy \
	  build/asan-mutant

.DEFAULT_GOAL := $(CHECK_SAVED_DEFAULT_GOAL)
