# libFuzzer harnesses for osvi (src/decode.c, src/query.c, and osvi.new's
# option checks in src/client.c).
#
# Standalone, from anywhere:   make -f spec/fuzz/fuzz.mk fuzz
# Or from the main Makefile:   include spec/fuzz/fuzz.mk
#
# Targets
#   fuzz-build     build build/fuzz/fuzz_decode, fuzz_query and fuzz_options
#   fuzz           run each fuzzer for FUZZ_SECONDS on a copy of its seed
#                  corpus (build/fuzz/corpus-*, never the committed corpus);
#                  fails when a fuzzer finds a crash, leak, UB or invariant
#                  violation, whose input is left in build/fuzz/artifacts/
#   fuzz-seeds     run every committed seed and every saved crash input
#                  (spec/fuzz/crashes/) once: a fast regression check
#   fuzz-coverage  line/branch coverage of decode.c, error.c, query.c,
#                  time.c, client.c and http.c reached by the corpus (needs
#                  llvm-profdata, llvm-cov)
#   fuzz-clean     remove build/fuzz
#
# The harness checks are strict. FUZZ_ALLOW=name,name tolerates findings
# already reported but not yet fixed (names in spec/fuzz/crashes/README)
# while looking for others.
#
# Needs clang with libFuzzer (Debian: clang-14, libclang-rt-14-dev), the Lua
# 5.4 and libcurl headers, and lua-cjson for Lua 5.4.

# Evaluated now, while this file is the last one read: the repository root.
FUZZ_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))/../..)
FUZZ_STANDALONE := $(if $(filter 1,$(words $(MAKEFILE_LIST))),1,)
FUZZ_SAVED_GOAL := $(.DEFAULT_GOAL)
# OSVI_WARN, the project's warning flags
include $(FUZZ_ROOT)/mk/warn.mk

FUZZ_CC          ?= clang
FUZZ_SECONDS     ?= 60
FUZZ_ALLOW       ?=
FUZZ_DIR         ?= $(FUZZ_ROOT)/build/fuzz
FUZZ_LUA_INC     ?= /usr/include/lua5.4
FUZZ_CURL_CFLAGS ?= $(shell pkg-config --cflags libcurl 2>/dev/null)
FUZZ_SANITIZE    ?= -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS      ?= -g -O1 -fno-omit-frame-pointer -std=c99 -D_POSIX_C_SOURCE=200809L \
                    $(OSVI_WARN)
FUZZ_LIBS        ?= -llua5.4 -lcurl -lpthread -lm
# libFuzzer flags for `fuzz`; FUZZ_FLAGS adds more, e.g. FUZZ_FLAGS=-jobs=4
FUZZ_RUN_FLAGS   ?= -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
FUZZ_FLAGS       ?=
FUZZ_ENV         ?= ASAN_OPTIONS=detect_leaks=1 \
                    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
                    OSVI_FUZZ_ALLOW=$(FUZZ_ALLOW)
FUZZ_PROFDATA    ?= llvm-profdata
FUZZ_LLVM_COV    ?= llvm-cov

FUZZ_SRC     := $(wildcard $(FUZZ_ROOT)/src/*.c)
FUZZ_OBJ     := $(patsubst $(FUZZ_ROOT)/src/%.c,$(FUZZ_DIR)/obj/%.o,$(FUZZ_SRC))
FUZZ_COV_OBJ := $(patsubst $(FUZZ_ROOT)/src/%.c,$(FUZZ_DIR)/cov/obj/%.o,$(FUZZ_SRC))
FUZZ_TARGETS := decode query options
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
FUZZ_HDRS    := $(FUZZ_ROOT)/src/osvi.h $(FUZZ_ROOT)/spec/fuzz/fuzz_allow.h \
                $(FUZZ_ROOT)/spec/fuzz/fuzz_program.h
FUZZ_INC      = -I$(FUZZ_ROOT)/src -I$(FUZZ_LUA_INC) $(FUZZ_CURL_CFLAGS)
FUZZ_ALL_CFLAGS = $(FUZZ_CFLAGS) $(FUZZ_SANITIZE) $(FUZZ_INC)
# the coverage build: clang's source-based coverage instead of the sanitizers
FUZZ_COV_CFLAGS = $(FUZZ_CFLAGS) -fsanitize=fuzzer -fprofile-instr-generate \
                  -fcoverage-mapping $(FUZZ_INC)

.PHONY: fuzz fuzz-build fuzz-seeds fuzz-coverage fuzz-clean
# keep the objects (make would delete them as intermediate files)
.SECONDARY: $(FUZZ_OBJ) $(FUZZ_COV_OBJ)

fuzz-build: $(FUZZ_BINS)

# osvi's sources, instrumented (objects apart from the module's own)
$(FUZZ_DIR)/obj/%.o: $(FUZZ_ROOT)/src/%.c $(FUZZ_ROOT)/src/osvi.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_ALL_CFLAGS) -c -o $@ $<

$(FUZZ_DIR)/fuzz_%: $(FUZZ_ROOT)/spec/fuzz/fuzz_%.c $(FUZZ_OBJ) $(FUZZ_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_ALL_CFLAGS) -o $@ $< $(FUZZ_OBJ) $(FUZZ_LIBS)

# Each fuzzer works in build/fuzz/corpus-NAME: the seeds are copied in (the
# README is not a seed), and what a run finds stays there for the next run.
# Every fuzzer runs even when one before it fails; the target fails if any did.
# `timeout` is a safety net: a run that hangs while reporting fails too.
fuzz: $(FUZZ_BINS)
	@mkdir -p $(FUZZ_DIR)/artifacts; rc=0; \
	for t in $(FUZZ_TARGETS); do \
	  work=$(FUZZ_DIR)/corpus-$$t; mkdir -p $$work; \
	  find $(FUZZ_ROOT)/spec/fuzz/corpus/$$t -type f ! -name 'README*' \
	    -exec cp {} $$work/ \; ; \
	  dict=$(FUZZ_ROOT)/spec/fuzz/$$t.dict; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  $(FUZZ_ENV) timeout -k 10 $$(( $(FUZZ_SECONDS) + 300 )) \
	    $(FUZZ_DIR)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) \
	    $(FUZZ_RUN_FLAGS) $$( [ -f $$dict ] && echo -dict=$$dict ) \
	    -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- $(FUZZ_FLAGS) $$work \
	    || { echo "fuzz_$$t FAILED: see $(FUZZ_DIR)/artifacts/"; rc=1; }; \
	done; exit $$rc

# Every seed, and every saved input of a past finding (spec/fuzz/crashes/),
# once: libFuzzer runs file arguments once each and exits. Logs go to
# build/fuzz/seeds-NAME.log.
fuzz-seeds: $(FUZZ_BINS)
	@rc=0; \
	for t in $(FUZZ_TARGETS); do \
	  files=$$(find $(FUZZ_ROOT)/spec/fuzz/corpus/$$t \
	    $$( [ -d $(FUZZ_ROOT)/spec/fuzz/crashes/$$t ] && echo $(FUZZ_ROOT)/spec/fuzz/crashes/$$t ) \
	    -type f ! -name 'README*' | sort); \
	  echo "== fuzz_$$t: $$(echo "$$files" | wc -l) seeds and past crashes"; \
	  $(FUZZ_ENV) $(FUZZ_DIR)/fuzz_$$t $$files >$(FUZZ_DIR)/seeds-$$t.log 2>&1 \
	    || { grep -E 'invariant violated|ERROR|runtime error' $(FUZZ_DIR)/seeds-$$t.log; \
	         grep 'Running:' $(FUZZ_DIR)/seeds-$$t.log | tail -n 1; \
	         echo "fuzz_$$t FAILED (log: $(FUZZ_DIR)/seeds-$$t.log)"; rc=1; }; \
	done; exit $$rc

$(FUZZ_DIR)/cov/obj/%.o: $(FUZZ_ROOT)/src/%.c $(FUZZ_ROOT)/src/osvi.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_COV_CFLAGS) -c -o $@ $<

$(FUZZ_DIR)/cov/fuzz_%: $(FUZZ_ROOT)/spec/fuzz/fuzz_%.c $(FUZZ_COV_OBJ) $(FUZZ_HDRS)
	$(FUZZ_CC) $(FUZZ_COV_CFLAGS) -o $@ $< $(FUZZ_COV_OBJ) $(FUZZ_LIBS)

# Coverage of the corpus `fuzz` grew in build/fuzz/corpus-* (else the seeds).
fuzz-coverage: $(FUZZ_TARGETS:%=$(FUZZ_DIR)/cov/fuzz_%)
	@for t in $(FUZZ_TARGETS); do \
	  dir=$(FUZZ_DIR)/corpus-$$t; [ -d $$dir ] || dir=$(FUZZ_ROOT)/spec/fuzz/corpus/$$t; \
	  rm -f $(FUZZ_DIR)/cov/$$t.profraw; \
	  OSVI_FUZZ_ALLOW=$(FUZZ_ALLOW) \
	  LLVM_PROFILE_FILE=$(FUZZ_DIR)/cov/$$t.profraw \
	    $(FUZZ_DIR)/cov/fuzz_$$t -runs=0 $$dir >$(FUZZ_DIR)/cov/$$t.log 2>&1 \
	    || echo "fuzz_$$t stopped early: see $(FUZZ_DIR)/cov/$$t.log"; \
	done; \
	$(FUZZ_PROFDATA) merge -sparse -o $(FUZZ_DIR)/cov/all.profdata \
	  $(FUZZ_TARGETS:%=$(FUZZ_DIR)/cov/%.profraw) && \
	$(FUZZ_LLVM_COV) report $(FUZZ_DIR)/cov/fuzz_decode \
	  -object $(FUZZ_DIR)/cov/fuzz_query \
	  -object $(FUZZ_DIR)/cov/fuzz_options \
	  -instr-profile=$(FUZZ_DIR)/cov/all.profdata \
	  $(FUZZ_ROOT)/src/decode.c $(FUZZ_ROOT)/src/error.c \
	  $(FUZZ_ROOT)/src/query.c $(FUZZ_ROOT)/src/time.c \
	  $(FUZZ_ROOT)/src/client.c $(FUZZ_ROOT)/src/http.c

fuzz-clean:
	rm -rf $(FUZZ_DIR)

# Standalone, `make -f spec/fuzz/fuzz.mk` builds the fuzzers; included, this
# fragment leaves the including Makefile's default goal alone.
ifeq ($(FUZZ_STANDALONE),1)
.DEFAULT_GOAL := fuzz-build
else
.DEFAULT_GOAL := $(FUZZ_SAVED_GOAL)
endif
