# mk/pkgs.mk -- installing the Debian packages a target needs, for every make
# file of the project (the Makefile, lint.mk, bench/bench.mk, ...):
#
#   include path/to/mk/pkgs.mk
#   target:
#   	$(call ensure_pkgs,gcc lua5.4 ...)
#
# Installs only the packages that are missing (apt-get, so as root), and runs
# `apt-get update` only when installing them without it failed. A package
# removed with its configuration left behind (which `dpkg -s` still finds)
# counts as missing: only dpkg's "installed" status counts.

ifndef OSVI_PKGS_MK
OSVI_PKGS_MK := 1

define ensure_pkgs
	@missing=""; for p in $(1); do \
	  [ "$$(dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null)" = installed ] || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $$missing 2>/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; }; \
	fi
endef

endif
