-- Filters: what each accepts, how it is encoded, and how a bad one fails.
local H = require "spec.support.helper"
local osvi = require "osvi"

local function usage(filters)
  local err = H.raises(osvi.query, filters)
  assert.equal("usage", err.kind)
  return err
end

describe("osvi.query", function()
  it("is empty without filters", function()
    assert.equal("", osvi.query())
    assert.equal("", osvi.query({}))
  end)

  it("builds every filter in a fixed key order, whatever the table order", function()
    local q = osvi.query {
      per_page = 50, page = 2, end_date = "2026-06-30", start_date = "2026-06-01",
      call_type = "outbound", phone_number = "+9198", campaign_upload_id = 19,
      campaign_id = 7, agent_uuid = "agent_IsZ3Q6Sf_60Eh26XQMGbz-R_og", status = "picked",
    }
    assert.equal("status=picked&agent_uuid=agent_IsZ3Q6Sf_60Eh26XQMGbz-R_og"
      .. "&campaign_id=7&campaign_upload_id=19&phone_number=%2B9198&call_type=outbound"
      .. "&start_date=2026-06-01&end_date=2026-06-30&page=2&per_page=50", q)
  end)

  it("sends neither page nor per_page unless given", function()
    assert.equal("status=busy", osvi.query { status = "busy" })
    assert.equal("per_page=100", osvi.query { per_page = 100 })
  end)

  describe("status", function()
    it("accepts one value, a comma list or an array, joined by a literal comma", function()
      assert.equal("status=picked", osvi.query { status = "picked" })
      assert.equal("status=picked,busy", osvi.query { status = "picked,busy" })
      assert.equal("status=picked,busy", osvi.query { status = "picked, busy" })
      assert.equal("status=picked,not_picked,failed,busy,voicemail,in_progress",
        osvi.query { status = { "picked", "not_picked", "failed", "busy", "voicemail", "in_progress" } })
    end)
    it("refuses unknown values, empty lists and empty elements", function()
      for _, bad in ipairs { "pickd", "picked,", "", {}, { "picked", "nope" }, { 1 }, 3, true } do
        local err = usage { status = bad }
        assert.equal("status", err.key)
        assert.matches("filter 'status'", err.message, 1, true)
      end
    end)
  end)

  describe("integers (campaign_id, campaign_upload_id, page, per_page)", function()
    it("accept an integer, an integral float or a string of digits", function()
      assert.equal("campaign_id=7", osvi.query { campaign_id = 7 })
      assert.equal("campaign_id=7", osvi.query { campaign_id = 7.0 })
      assert.equal("campaign_id=7", osvi.query { campaign_id = "7" })
      assert.equal("campaign_upload_id=123456789012", osvi.query { campaign_upload_id = "123456789012" })
      assert.equal("page=3&per_page=1", osvi.query { page = "3", per_page = 1.0 })
    end)
    it("refuse fractions, signs, words and out-of-range values, naming the key and value", function()
      local cases = {
        { "campaign_id", 7.5 }, { "campaign_id", "-7" }, { "campaign_id", "7a" },
        { "campaign_id", 0 }, { "campaign_id", "" }, { "campaign_id", {} },
        { "campaign_upload_id", -1 }, { "page", 0 }, { "per_page", 101 },
        { "per_page", 0 }, { "page", 0 / 0 }, { "per_page", math.huge },
      }
      for _, c in ipairs(cases) do
        local err = usage { [c[1]] = c[2] }
        assert.equal(c[1], err.key)
        assert.matches("filter '" .. c[1] .. "'", err.message, 1, true)
        assert.matches("expected", err.message, 1, true)
      end
      assert.matches("got 'abc'", usage({ campaign_id = "abc" }).message, 1, true)
    end)
  end)

  describe("phone_number", function()
    it("is digits with an optional leading '+', which arrives as %2B", function()
      assert.equal("phone_number=%2B919876543210", osvi.query { phone_number = "+919876543210" })
      assert.equal("phone_number=98765", osvi.query { phone_number = "98765" })
    end)
    it("refuses anything else", function()
      for _, bad in ipairs { "", "+", "98 76", "+91-98", "++91", "1234567890123456", 919876 } do
        assert.equal("phone_number", usage({ phone_number = bad }).key)
      end
    end)
  end)

  it("checks agent_uuid's shape", function()
    assert.equal("agent_uuid=agent_a-b_C9", osvi.query { agent_uuid = "agent_a-b_C9" })
    for _, bad in ipairs { "agent_", "agent x", "IsZ3Q6Sf", "agent_a&b", "agent_a/b", 5 } do
      assert.equal("agent_uuid", usage({ agent_uuid = bad }).key)
    end
  end)

  it("checks call_type", function()
    assert.equal("call_type=inbound", osvi.query { call_type = "inbound" })
    assert.equal("call_type", usage({ call_type = "Inbound" }).key)
  end)

  describe("dates", function()
    it("send a date or a timestamp percent-encoded (':' and '+')", function()
      assert.equal("start_date=2026-06-01", osvi.query { start_date = "2026-06-01" })
      assert.equal("start_date=2026-06-12T09%3A30%3A04%2B05%3A30",
        osvi.query { start_date = "2026-06-12T09:30:04+05:30" })
      assert.equal("end_date=2026-06-12T04%3A00%3A04.123Z",
        osvi.query { end_date = "2026-06-12T04:00:04.123Z" })
      assert.equal("end_date=2026-06-12T04%3A00%3A04-03%3A00",
        osvi.query { end_date = "2026-06-12T04:00:04-03:00" })
    end)
    it("send an integer epoch as ISO-8601 in IST", function()
      -- 2026-06-12T04:00:04Z is 09:30:04 in IST
      assert.equal("start_date=2026-06-12T09%3A30%3A04%2B05%3A30",
        osvi.query { start_date = 1781236804 })
      assert.equal("start_date=1970-01-01T05%3A30%3A00%2B05%3A30", osvi.query { start_date = 0 })
    end)
    it("refuse impossible dates, missing offsets and fractional epochs", function()
      local bad = { "2026-02-30", "2026-13-01", "2026-6-1", "2026-06-01T09:30:04",
        "2026-06-01T25:00:00Z", "2026-06-01 09:30:04Z", "2026-06-01T09:30:04+5:30",
        "yesterday", "", 1.5, {} }
      for _, v in ipairs(bad) do
        assert.equal("start_date", usage({ start_date = v }).key)
        assert.equal("end_date", usage({ end_date = v }).key)
      end
      assert.equal("start_date", usage({ start_date = "2026-02-29" }).key)
      assert.equal("start_date=2028-02-29", osvi.query { start_date = "2028-02-29" }) -- leap year
    end)
    it("refuse a start after the end, comparing whole IST days inclusively", function()
      assert.equal("start_date", usage({ start_date = "2026-06-02", end_date = "2026-06-01" }).key)
      assert.equal("start_date", usage({ start_date = "2026-06-01T18:30:00Z",
        end_date = "2026-06-01" }).key) -- 00:00 IST on the 2nd
      -- the same day, and an instant inside the end day, are fine
      assert.truthy(osvi.query { start_date = "2026-06-01", end_date = "2026-06-01" })
      assert.truthy(osvi.query { start_date = "2026-06-01T18:29:59Z", end_date = "2026-06-01" })
    end)
  end)

  it("names an unknown key and suggests the closest one", function()
    local err = usage { stauts = "picked" }
    assert.equal("stauts", err.key)
    assert.matches("unknown filter 'stauts' (did you mean 'status'?)", err.message, 1, true)
    assert.matches("unknown filter 'colour'", usage({ colour = 1 }).message, 1, true)
    assert.equal("usage", usage({ [1] = "picked" }).kind)
    -- the key is given back exactly, embedded zeros included (found by fuzzing)
    assert.equal("status\0x", usage({ ["status\0x"] = "picked" }).key)
  end)

  it("refuses limit for a single page, and a non-table", function()
    assert.equal("limit", usage({ limit = 5 }).key)
    assert.equal("usage", H.raises(osvi.query, "status=picked").kind)
  end)

  it("gives a readable usage message, after the caller's position", function()
    local ok, err = pcall(osvi.query, { per_page = 500 }) local line = debug.getinfo(1, "l").currentline
    assert.is_false(ok)
    assert.equal("spec/query_spec.lua:" .. line .. ": osvi: usage: filter 'per_page': expected an integer "
      .. "from 1 to 100 (an integer, an integral number or a string of digits), got 500",
      (tostring(err):gsub("^%./", "")))
  end)
end)

describe("osvi.time", function()
  it("reads ISO-8601 with an offset, and dates as IST midnight", function()
    assert.equal(1781236804, osvi.time("2026-06-12T09:30:04+05:30"))
    assert.equal(1781236804, osvi.time("2026-06-12T04:00:04Z"))
    assert.equal(1781236804, osvi.time("2026-06-12T04:00:04.999Z"))
    assert.equal(1781202600, osvi.time("2026-06-12"))
    assert.equal(0, osvi.time("1970-01-01T00:00:00Z"))
    assert.equal(-1, osvi.time("1969-12-31T23:59:59.5Z"))
    assert.equal("integer", H.math_type(osvi.time("2026-06-12")))
  end)
  it("agrees with the date command for a timestamp far from the data", function()
    local p = io.popen("date -u -d 2031-03-04T05:06:07Z +%s")
    local expected = tonumber(p:read("*l"))
    p:close()
    assert.equal(expected, osvi.time("2031-03-04T10:36:07+05:30"))
  end)
  it("gives nil for nil (a call never picked up) and raises on garbage", function()
    assert.is_nil(osvi.time(nil))
    assert.equal("usage", H.raises(osvi.time, "2026-06-12T09:30:04").kind)
    assert.equal("usage", H.raises(osvi.time, 12).kind)
  end)
end)
