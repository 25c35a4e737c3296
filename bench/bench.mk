# bench/bench.mk -- `make -f bench/bench.mk bench` (from the project root), or `make bench` where
# the Makefile includes this file. Installs the Debian packages it needs when they are missing
# (as root), builds osvi.so and the two C tools, then runs bench/run.lua. See bench/README.md.

BENCH_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
# ensure_pkgs (installs what is missing) and OSVI_WARN (the warning flags)
include $(BENCH_DIR)/../mk/pkgs.mk $(BENCH_DIR)/../mk/warn.mk

BENCH_LUA         ?= lua5.4
# tools, the osvi.so under test, certificate, nginx files, logs, results.md; not under build/,
# which `make clean` removes (perhaps while a benchmark runs)
BENCH_BUILD       ?= $(BENCH_DIR)/.build
BENCH_CC          ?= gcc
BENCH_CFLAGS      ?= -O2 $(OSVI_WARN)
BENCH_CALLS       ?= 100000
BENCH_SMALL_CALLS ?= 10000
BENCH_PER_PAGE    ?= 100
BENCH_LATENCY_MS  ?= 20
BENCH_REPS        ?= 5
# repetitions of the slow runs: the curl command everywhere, every sequential run at 20 ms
BENCH_SLOW_REPS   ?= 3
# pages in flight ahead for the osvi-best contender (osvi.new{prefetch = N}); 16, osvi's
# maximum, is its fastest setting here (README: prefetch); the parallel transfer floor uses as many
BENCH_PREFETCH    ?= 16
BENCH_WORKLOADS   ?= loopback latency https rss
BENCH_CONTENDERS  ?= luasocket curl osvi-seq osvi-best
# the osvi.so to measure (the default is built with the project's Makefile); it is copied
# into BENCH_BUILD first, so a rebuild during the run changes nothing
BENCH_OSVI_SO     ?= osvi.so
BENCH_PKGS        ?= gcc make pkg-config lua5.4 liblua5.4-dev libcurl4-openssl-dev lua-cjson \
                     lua-socket lua-sec curl nginx openssl coreutils

BENCH_CURL_CFLAGS ?= $(shell pkg-config --cflags libcurl 2>/dev/null)
BENCH_CURL_LIBS   ?= $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)

.PHONY: bench bench-deps bench-osvi bench-tools

bench: bench-deps
	$(MAKE) -f $(BENCH_DIR)/bench.mk --no-print-directory bench-osvi bench-tools
	BENCH_LUA='$(BENCH_LUA)' BENCH_BUILD='$(abspath $(BENCH_BUILD))' BENCH_CALLS='$(BENCH_CALLS)' \
	BENCH_SMALL_CALLS='$(BENCH_SMALL_CALLS)' BENCH_PER_PAGE='$(BENCH_PER_PAGE)' \
	BENCH_LATENCY_MS='$(BENCH_LATENCY_MS)' BENCH_REPS='$(BENCH_REPS)' BENCH_SLOW_REPS='$(BENCH_SLOW_REPS)' \
	BENCH_PREFETCH='$(BENCH_PREFETCH)' BENCH_WORKLOADS='$(BENCH_WORKLOADS)' \
	BENCH_CONTENDERS='$(BENCH_CONTENDERS)' BENCH_OSVI_CPATH='$(abspath $(BENCH_BUILD))/lib/?.so' \
	$(BENCH_LUA) $(BENCH_DIR)/run.lua

# Only the packages that are missing (mk/pkgs.mk).
bench-deps:
	$(call ensure_pkgs,$(BENCH_PKGS))

# The project's own build (unless BENCH_OSVI_SO names another file), then a private copy.
bench-osvi:
ifeq ($(BENCH_OSVI_SO),osvi.so)
	$(MAKE) -f Makefile --no-print-directory osvi.so
endif
	@mkdir -p $(BENCH_BUILD)/lib
	cp $(BENCH_OSVI_SO) $(BENCH_BUILD)/lib/osvi.so

bench-tools: $(BENCH_BUILD)/rusage $(BENCH_BUILD)/floor_transfer

$(BENCH_BUILD)/rusage: $(BENCH_DIR)/rusage.c
	@mkdir -p $(@D)
	$(BENCH_CC) $(BENCH_CFLAGS) -o $@ $<

$(BENCH_BUILD)/floor_transfer: $(BENCH_DIR)/floor_transfer.c
	@mkdir -p $(@D)
	$(BENCH_CC) $(BENCH_CFLAGS) $(BENCH_CURL_CFLAGS) -o $@ $< $(BENCH_CURL_LIBS)
