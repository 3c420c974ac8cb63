-- Take a lock if it is free, and issue the next fencing token with it.
-- KEYS[1]  the lock key
-- KEYS[2]  the fencing counter (same hash tag as the lock, so both live on one cluster node)
-- ARGV[1]  our random token
-- ARGV[2]  time to live in ms
-- Returns  the fencing token (an integer that grows with every acquisition), or false if the lock is taken
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
