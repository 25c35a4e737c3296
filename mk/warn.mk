# mk/warn.mk -- the C warning flags of the project, one list for every make
# file that compiles C (the Makefile, spec/c/check.mk, spec/fuzz/fuzz.mk,
# lint.mk's clang-tidy, bench/bench.mk, examples/embed/Makefile):
#
#   include path/to/mk/warn.mk
#   CFLAGS = ... $(OSVI_WARN) ...
#
# CI builds the module with them and -Werror (.ci/run).

ifndef OSVI_WARN_MK
OSVI_WARN_MK := 1

OSVI_WARN = -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes \
            -Wpointer-arith -Wcast-qual -pedantic

endif
