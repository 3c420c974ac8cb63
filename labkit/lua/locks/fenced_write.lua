-- Write a value unless the writer's fencing token is older than one accepted before: a holder may write
-- as often as it likes with its own token; a holder whose lock was taken over (a lower token) may not.
-- KEYS[1]  the value
-- KEYS[2]  the highest fencing token accepted so far (same hash tag as the value)
-- ARGV[1]  the writer's fencing token
-- ARGV[2]  the value to write
-- Returns  1 if written, 0 if rejected as stale (a token below the highest accepted)
local highest = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = tonumber(ARGV[1])
if token < highest then
  return 0
end
if token > highest then
  redis.call('SET', KEYS[2], ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
