-- TLS: verification is always on. A local `openssl s_server` with a
-- certificate made here stands in for a server osvi must not trust.
local H = require "spec.support.helper"
local osvi = require "osvi"
local socket = require "socket"

local dir, port, proc

local function sh(cmd)
  assert(H.execute(cmd .. " >/dev/null 2>&1"), cmd)
end

local free_port = H.closed_port

describe("TLS", function()
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    sh("mkdir -p " .. dir)
    sh(string.format("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
      .. "-addext subjectAltName=IP:127.0.0.1 -keyout %s/key.pem -out %s/cert.pem", dir, dir))
    port = free_port()
    proc = io.popen(string.format("exec openssl s_server -quiet -www -accept 127.0.0.1:%d "
      .. "-cert %s/cert.pem -key %s/key.pem 2>&1", port, dir, dir))
    -- wait until it accepts connections
    for _ = 1, 100 do
      local c = socket.connect("127.0.0.1", port)
      if c then c:close() break end
      socket.sleep(0.05)
    end
  end)

  teardown(function()
    os.execute("pkill -f 'openssl s_server -quiet -www -accept 127.0.0.1:" .. port .. "'")
    proc:close()
    sh("rm -rf " .. dir)
  end)

  it("refuses a certificate it cannot verify, as network, without retrying", function()
    local c = osvi.new { token = H.TOKEN, base_url = "https://127.0.0.1:" .. port, retry_base = 0 }
    local page, err = c:page {}
    assert.is_nil(page)
    assert.equal("network", err.kind)
    assert.equal(1, err.attempts)
    assert.is_nil(err.status)
  end)

  it("trusts it through ca_file, and then reads the answer (HTML here: decode)", function()
    local c = osvi.new { token = H.TOKEN, base_url = "https://127.0.0.1:" .. port,
                         ca_file = dir .. "/cert.pem" }
    local page, err = c:page {}
    assert.is_nil(page)
    assert.equal("decode", err.kind)
    assert.equal(200, err.status)
    assert.matches("HTML", err.message, 1, true)
  end)

  it("checks the host name even with a trusted certificate", function()
    local c = osvi.new { token = H.TOKEN, base_url = "https://localhost:" .. port,
                         ca_file = dir .. "/cert.pem", max_retries = 0 }
    local page, err = c:page {}
    assert.is_nil(page)
    assert.equal("network", err.kind)
  end)
end)
