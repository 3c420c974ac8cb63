-- Increment a counter unless that would take it past a cap: a read-modify-write INCR alone cannot do.
-- KEYS[1]  the counter
-- ARGV[1]  the cap (an integer)
-- Returns  the new value, or -1 when the counter is already at the cap (nothing is written).
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then
  return -1
end
return redis.call('INCR', KEYS[1])
