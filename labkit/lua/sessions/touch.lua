-- Refresh a session's idle TTL, capped by its absolute deadline; never creates anything.
-- KEYS[1]  the session hash
-- ARGV[1]  idle TTL in ms
-- Returns  1 if the session exists and was refreshed, 0 if it is missing or past its deadline
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local now = now_ms()
local left = tonumber(redis.call('HGET', KEYS[1], 'deadline')) - now
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('HSET', KEYS[1], 'last_seen', now)
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), left))
return 1
