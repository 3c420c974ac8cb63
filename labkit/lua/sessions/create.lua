-- Create a session hash that expires after the idle TTL, never later than the absolute lifetime.
-- KEYS[1]  the session hash
-- ARGV[1]  idle TTL in ms; ARGV[2] absolute lifetime in ms; ARGV[3..] field, value pairs (user_id first)
-- Returns  the absolute deadline in ms since the epoch (server clock)
local now = now_ms()
local deadline = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'created', now, 'last_seen', now, 'deadline', deadline, unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), tonumber(ARGV[2])))
return deadline
