# lint.mk — formatting and static analysis, each failing on any finding.
#
#   make -f lint.mk lint           all four below
#   make -f lint.mk format-check   clang-format --dry-run --Werror (.clang-format)
#   make -f lint.mk cppcheck       cppcheck on src/, as Lua 5.4 and as Lua 5.1
#   make -f lint.mk clang-tidy     clang-tidy on src/ (.clang-tidy), as Lua 5.4
#                                  and as Lua 5.1
#   make -f lint.mk luacheck       luacheck on every Lua file (.luacheckrc)
#   make -f lint.mk format         rewrites the C files in place (clang-format -i)
#
# Run from the repository root, standalone as above or after `include lint.mk`
# in the Makefile (it then leaves the Makefile's default goal alone). Each
# target first installs the Debian packages it needs when they are missing
# (apt-get, as root: ensure_pkgs, mk/pkgs.mk). Variables are prefixed LINT_
# so that nothing clashes with the Makefile's. LINT_SKIP lists directories to
# leave out of format-check and luacheck, e.g. `make -f lint.mk lint
# LINT_SKIP=bench`.
#
# The Lua 5.1 passes see compat.h's code for Lua 5.3, 5.1 and LuaJIT, which the
# Lua 5.4 passes do not compile. Neither pass needs a compile database: the
# flags are the Makefile's ALL_CFLAGS without code generation, given on the
# command line (clang-tidy ... -- FLAGS), with the project's warning flags
# (OSVI_WARN, mk/warn.mk).

LINT_SAVED_DEFAULT_GOAL := $(.DEFAULT_GOAL)
LINT_MK_DIR := $(dir $(lastword $(MAKEFILE_LIST)))mk
include $(LINT_MK_DIR)/pkgs.mk $(LINT_MK_DIR)/warn.mk

LINT_SKIP ?=

LINT_CLANG_FORMAT ?= clang-format
LINT_CLANG_TIDY   ?= clang-tidy
LINT_CPPCHECK     ?= cppcheck
LINT_LUACHECK     ?= luacheck

LINT_LUA54_INCDIR ?= /usr/include/lua5.4
LINT_LUA51_INCDIR ?= /usr/include/lua5.1

# Debian packages, by target
LINT_PKGS_FORMAT   = clang-format
LINT_PKGS_HEADERS  = pkg-config liblua5.4-dev liblua5.1-0-dev libcurl4-openssl-dev
LINT_PKGS_CPPCHECK = cppcheck $(LINT_PKGS_HEADERS)
LINT_PKGS_TIDY     = clang-tidy $(LINT_PKGS_HEADERS)
LINT_PKGS_LUACHECK = lua-check

lint_skip = $(filter-out $(LINT_SKIP) $(addsuffix /%,$(LINT_SKIP)),$(1))

# Every C file of the project: the module, the C harnesses and fuzzers, the
# embedding example and the benchmarks' tools
LINT_C_FILES = $(call lint_skip,$(sort $(wildcard \
  src/*.c src/*.h spec/c/*.c spec/c/*.h spec/fuzz/*.c spec/fuzz/*.h \
  examples/*/*.c examples/*/*.h bench/*.c bench/*.h)))
LINT_SRC = $(sort $(wildcard src/*.c))

# Every Lua file: the directories are searched for *.lua by luacheck itself,
# so new files are linted as they appear
LINT_LUA_PATHS = bin/osvi-calls $(call lint_skip,lua spec examples bench)
# (--exclude-files takes every argument after it: it goes last)
LINT_LUA_EXCLUDE = $(if $(LINT_SKIP),--exclude-files $(foreach d,$(LINT_SKIP),'$(d)/**'))

LINT_DEFINES = -D_POSIX_C_SOURCE=200809L

# cppcheck reads the Lua headers but not the system's: libc, POSIX and libcurl
# come from its own library descriptions. LLONG_MAX, which luaconf.h needs to
# pick lua_Integer, is otherwise in <limits.h>. --inline-suppr: the few false
# positives are suppressed where they are, each with its reason.
LINT_CPPCHECK_FLAGS ?= --std=c99 --enable=warning,style,performance,portability \
  --inline-suppr --error-exitcode=1 --quiet --library=posix,libcurl \
  -DLLONG_MAX=9223372036854775807LL '-DLLONG_MIN=(-LLONG_MAX-1LL)' \
  $(LINT_DEFINES)

# the checks are in .clang-tidy; errors and warnings alike make it fail
LINT_TIDY_FLAGS ?= --quiet
LINT_TIDY_CFLAGS = -std=c99 $(LINT_DEFINES) $(OSVI_WARN)
# Lua 5.1: lua_rawgeti and friends take an int where 5.4 takes a lua_Integer,
# so every lua_Integer index narrows there; the 5.4 pass checks those lines.
LINT_TIDY51_CHECKS = -bugprone-narrowing-conversions

# $(call lint_tidy,ARGS): clang-tidy ARGS with its exit status, without the
# "N warnings generated." lines (diagnostics in system headers, not shown)
lint_tidy = out=$$($(LINT_CLANG_TIDY) $(1) 2>&1); rc=$$?; \
  printf '%s\n' "$$out" | grep -v 'warnings\? generated\.$$'; exit $$rc

.PHONY: lint format-check format cppcheck clang-tidy luacheck

lint: format-check cppcheck clang-tidy luacheck
	@echo "lint: clean"

format-check:
	$(call ensure_pkgs,$(LINT_PKGS_FORMAT))
	$(LINT_CLANG_FORMAT) --dry-run --Werror $(LINT_C_FILES)
	@echo "format-check: $(words $(LINT_C_FILES)) files formatted"

format:
	$(call ensure_pkgs,$(LINT_PKGS_FORMAT))
	$(LINT_CLANG_FORMAT) -i $(LINT_C_FILES)

cppcheck:
	$(call ensure_pkgs,$(LINT_PKGS_CPPCHECK))
	$(LINT_CPPCHECK) $(LINT_CPPCHECK_FLAGS) -I$(LINT_LUA54_INCDIR) src/
	$(LINT_CPPCHECK) $(LINT_CPPCHECK_FLAGS) -I$(LINT_LUA51_INCDIR) \
	  '--suppress=*:$(LINT_LUA51_INCDIR)/*' src/
	@echo "cppcheck: clean (Lua 5.4 and 5.1)"

clang-tidy:
	$(call ensure_pkgs,$(LINT_PKGS_TIDY))
	$(call lint_tidy,$(LINT_TIDY_FLAGS) $(LINT_SRC) -- $(LINT_TIDY_CFLAGS) \
	  -I$(LINT_LUA54_INCDIR) $$(pkg-config --cflags libcurl))
	$(call lint_tidy,$(LINT_TIDY_FLAGS) --checks=$(LINT_TIDY51_CHECKS) \
	  $(LINT_SRC) -- $(LINT_TIDY_CFLAGS) -isystem $(LINT_LUA51_INCDIR) \
	  $$(pkg-config --cflags libcurl))
	@echo "clang-tidy: clean (Lua 5.4 and 5.1)"

luacheck:
	$(call ensure_pkgs,$(LINT_PKGS_LUACHECK))
	$(LINT_LUACHECK) --no-color --quiet $(LINT_LUA_PATHS) $(LINT_LUA_EXCLUDE)

# Standalone, `make -f lint.mk` runs lint; included, the Makefile's default
# goal stays what it was (or, included before any target, its next target).
ifeq ($(notdir $(firstword $(MAKEFILE_LIST))),lint.mk)
.DEFAULT_GOAL := lint
else
.DEFAULT_GOAL := $(LINT_SAVED_DEFAULT_GOAL)
endif
