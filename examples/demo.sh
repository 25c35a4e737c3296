#!/bin/sh
# make demo: start the local OSVI server, run the report against it, stop it.
cd "$(dirname "$0")/.." || exit 2
LUA=${LUA:-lua5.4}
fifo=$(mktemp -u)
mkfifo "$fifo"
$LUA spec/support/server.lua --port 0 --calls "${CALLS:-500}" >"$fifo" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$fifo"' EXIT INT TERM
read -r line <"$fifo"
url=$(echo "$line" | sed -n 's/.*listening on \([^ ]*\).*/\1/p')
[ -n "$url" ] || { echo "the local server did not start: $line" >&2; exit 1; }
echo "local OSVI server: $url"
echo
OSVI_API_TOKEN=osvi-test-token1 OSVI_BASE_URL="$url" \
  LUA_CPATH="./?.so;;" $LUA examples/report.lua "$@"
