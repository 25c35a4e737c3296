--[[
spec/support/server.lua -- a local stand-in for the OSVI "List calls" API.

Used by the busted specs, the demo, the examples and the benchmarks. Plain Lua 5.4 (or 5.3) +
LuaSocket + lua-cjson.

  lua5.4 spec/support/server.lua [--host 127.0.0.1] [--port 0] [--calls 300] [--seed 1]
                                 [--token osvi-test-token1] [--latency-ms 0]
                                 [--now WHEN] [--exit-with-parent]

When ready it prints one line on stdout and then serves until killed or shut down:

  osvi-server listening on http://127.0.0.1:PORT pid=PID

--now pins the data set's dates: the newest call was created at WHEN (an ISO-8601 timestamp
with an offset, a date for its midnight in IST, or epoch seconds); without it, at the time the
server starts, the others going back about 5 minutes per call. --exit-with-parent makes it exit
when the process that started it exits (the specs' servers); without it, it serves until it is
killed or shut down. It can be started again on the same port at once.

The server itself -- the data set, the API, the control API (/_control/stats, calls, reset,
config, arrive, update, script, shutdown) and the fault script -- is the module beside this file,
spec/support/osvi_server.lua, whose header documents them; spec/server_spec.lua tests its parts.
]]

-- the module beside this file, wherever the command is run from
local dir = arg and arg[0] and arg[0]:match("^(.*)/[^/]*$") or "."
package.path = dir .. "/?.lua;" .. package.path
local server = require("osvi_server")

local opts, text, status = server.parse_args(arg)
if not opts then
  (status == 0 and io.stdout or io.stderr):write(text)
  os.exit(status)
end
server.new(opts).run()
os.exit(0)
