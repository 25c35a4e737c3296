--[[
bench/contenders/checksum.lua -- what proves that a contender read the same calls.

A contender ends by printing `count=N checksum=HHHHHHHHHHHHHHHH`: how many calls it read and
a 64-bit FNV-1a-style hash of their call_ids in order. The hash is updated call by call, so
checking costs a few integer operations per call and no memory (peak RSS stays the
contender's own).
]]

local unpack = string.unpack
local PRIME = 0x100000001b3 -- FNV-1a's 64-bit prime; Lua integers wrap around on overflow

local Sum = {}
Sum.__index = Sum

-- Adds one call_id. A UUID (36 bytes) is read as five words by one string.unpack; anything
-- else byte by byte. Mixing in the length keeps "ab","c" apart from "a","bc".
function Sum:add(id)
  local h = self.h
  if #id == 36 then
    local a, b, c, d, e = unpack("<i8i8i8i8i4", id)
    h = (((((h ~ a) * PRIME ~ b) * PRIME ~ c) * PRIME ~ d) * PRIME ~ e) * PRIME
  else
    for i = 1, #id do h = (h ~ id:byte(i)) * PRIME end
  end
  self.h = (h ~ #id) * PRIME
  self.n = self.n + 1
end

function Sum:line()
  return string.format("count=%d checksum=%016x", self.n, self.h)
end

function Sum:report()
  io.stdout:write(self:line(), "\n")
end

return function()
  return setmetatable({ n = 0, h = 0xcbf29ce484222325 }, Sum) -- FNV-1a's offset basis (wraps)
end
