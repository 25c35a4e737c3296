#!/bin/sh
# spec/c/with-server.sh [--calls N] CMD [ARG...]
#
# Starts the local stand-in API (spec/support/server.lua) on a free port of
# 127.0.0.1, exports its base URL as OSVI_TEST_URL, runs CMD, stops the
# server (also when CMD fails or the script is interrupted) and exits with
# CMD's status. The server's stderr is shown when it wrote anything.
# LUA (default lua5.4) is the interpreter that runs the server.
set -u

LUA=${LUA:-lua5.4}
calls=300
if [ "${1-}" = "--calls" ]; then
  [ $# -ge 2 ] || { echo "with-server: --calls needs a number" >&2; exit 2; }
  calls=$2
  shift 2
fi
if [ $# -eq 0 ]; then
  echo "usage: $0 [--calls N] CMD [ARG...]" >&2
  exit 2
fi

here=$(cd "$(dirname "$0")" && pwd) || exit 2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/osvi-with-server.XXXXXX") || exit 2
server_pid=

# shellcheck disable=SC2317  # cleanup runs from the EXIT trap
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  if [ -s "$tmp/stderr" ]; then
    echo "with-server: the server wrote on stderr:" >&2
    cat "$tmp/stderr" >&2
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

: >"$tmp/stdout"
"$LUA" "$here/../support/server.lua" --host 127.0.0.1 --port 0 \
  --calls "$calls" >"$tmp/stdout" 2>"$tmp/stderr" &
server_pid=$!

# The first line is "osvi-server listening on http://127.0.0.1:PORT pid=PID".
url=
tries=0
while [ "$tries" -lt 100 ]; do
  url=$(sed -n '1s|^osvi-server listening on \(http://127\.0\.0\.1:[0-9][0-9]*\) pid=[0-9][0-9]*$|\1|p' "$tmp/stdout")
  [ -n "$url" ] && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
  tries=$((tries + 1))
done
if [ -z "$url" ]; then
  echo "with-server: the server did not start" >&2
  exit 2
fi

OSVI_TEST_URL=$url
export OSVI_TEST_URL
"$@"
status=$?
exit "$status"
