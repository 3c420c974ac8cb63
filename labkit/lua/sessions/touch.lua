-- Refresh a session's idle TTL, capped by its absolute deadline; never creates anything. A lazy touch
-- (ARGV[2] > 0) writes only when the last write is at least that old: most requests then write nothing.
-- KEYS[1]  the session hash
-- ARGV[1]  idle TTL in ms; ARGV[2] minimum ms between writes (0: write on every touch);
-- ARGV[3]  optional now in ms (tests only; else TIME)
-- Returns  1 if the session exists (refreshed now, or less than ARGV[2] ms ago), 0 if it is missing or
--          past its deadline
local saved = redis.call('HMGET', KEYS[1], 'deadline', 'last_seen')
if not saved[1] then
  return 0
end
local now = now_ms(ARGV[3])
local left = tonumber(saved[1]) - now
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
if now - (tonumber(saved[2]) or 0) < tonumber(ARGV[2]) then
  return 1
end
redis.call('HSET', KEYS[1], 'last_seen', now)
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), left))
return 1
