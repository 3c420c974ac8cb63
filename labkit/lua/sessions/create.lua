-- Create a session hash that expires after the idle TTL, never later than the absolute lifetime, and add
-- its id to the user's index, which lives at least as long as the user's newest session.
-- KEYS[1]  the session hash; KEYS[2] the user's index (a set of session ids; same hash tag), absent for an
--          anonymous session (no user, no index)
-- ARGV[1]  idle TTL in ms; ARGV[2] absolute lifetime in ms; ARGV[3] the session id;
-- ARGV[4..] field, value pairs (user_id first: empty for an anonymous session)
-- Returns  the absolute deadline in ms since the epoch (server clock)
local now = now_ms()
local lifetime = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'created', now, 'last_seen', now, 'deadline', now + lifetime, unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], math.min(tonumber(ARGV[1]), lifetime))
if #KEYS > 1 then
  redis.call('SADD', KEYS[2], ARGV[3])
  if redis.call('PTTL', KEYS[2]) < lifetime then
    redis.call('PEXPIRE', KEYS[2], lifetime)
  end
end
return now + lifetime
