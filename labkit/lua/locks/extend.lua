-- Give a lock we still own a new time to live; never revive one that expired or changed hands.
-- KEYS[1]  the lock key
-- ARGV[1]  our token
-- ARGV[2]  the new time to live in ms
-- Returns  1 if extended, 0 if the lock is gone or held by someone else
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
