-- Release a lock only if we still own it (the token matches): never someone else's lock.
-- KEYS[1]  the lock key
-- ARGV[1]  our token
-- Returns  1 if released, 0 if the lock had expired or belongs to another owner
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
