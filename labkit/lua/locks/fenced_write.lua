-- Write a value only if the writer's fencing token is newer than every token accepted before.
-- KEYS[1]  the value
-- KEYS[2]  the highest fencing token accepted so far (same hash tag as the value)
-- ARGV[1]  the writer's fencing token
-- ARGV[2]  the value to write
-- Returns  1 if written, 0 if rejected as stale (a token not above the highest seen)
local highest = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) <= highest then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2])
return 1
