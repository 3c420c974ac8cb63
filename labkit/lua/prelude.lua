-- The prelude: labkit's loader puts these lines before every script it ships (labkit/scripts.py).
-- now_ms(override)  the server's clock in whole milliseconds (TIME), or `override` when a test passes one
local function now_ms(override)
  if override then
    return tonumber(override)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

