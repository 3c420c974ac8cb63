-- Set fields of an existing session only; a missing session stays missing.
-- KEYS[1]  the session hash
-- ARGV[1..] field, value pairs
-- Returns  1 if the session existed and was updated, 0 otherwise
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
