#!/bin/sh
# Runs a command against the local OSVI server, as `make demo` runs the report:
#
#   sh examples/with_server.sh lua5.4 examples/export_csv.lua > calls.csv
#   sh examples/with_server.sh lua5.4 bin/osvi-calls --status picked --limit 10
#
# It starts spec/support/server.lua on a free port of 127.0.0.1 (CALLS calls,
# default 500), runs the command with OSVI_API_TOKEN, OSVI_BASE_URL and
# LUA_CPATH (./osvi.so first) set, stops the server and exits with the
# command's status.
cd "$(dirname "$0")/.." || exit 2
LUA=${LUA:-lua5.4}
[ $# -gt 0 ] || { echo "usage: sh examples/with_server.sh COMMAND [ARGS...]" >&2; exit 2; }
dir=$(mktemp -d)
fifo="$dir/server.out"
mkfifo "$fifo"
$LUA spec/support/server.lua --port 0 --calls "${CALLS:-500}" >"$fifo" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM
read -r line <"$fifo"
url=$(echo "$line" | sed -n 's/.*listening on \([^ ]*\).*/\1/p')
[ -n "$url" ] || { echo "the local server did not start: $line" >&2; exit 1; }
echo "local OSVI server: $url" >&2
OSVI_API_TOKEN=osvi-test-token1 OSVI_BASE_URL="$url" LUA_CPATH="./?.so;${LUA_CPATH:-;}" "$@"
