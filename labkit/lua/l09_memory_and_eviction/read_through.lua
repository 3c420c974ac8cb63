-- One cache request, read-through: a hit returns the value's presence; a miss writes the value (as an
-- application would after reading its database), with an expiry unless the TTL is 0.
-- KEYS[1]  the cache key
-- ARGV[1]  the value to store on a miss
-- ARGV[2]  the TTL in seconds (0: no expiry)
-- Returns  1 on a hit, 0 on a miss (the value is now cached); an OOM error when the server refuses the write
if redis.call('GET', KEYS[1]) then
  return 1
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
