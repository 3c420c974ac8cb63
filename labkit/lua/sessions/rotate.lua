-- Move a session to a new id (same fields, same TTL) and swap the ids in the user's index, all at once:
-- the old id stops working, and no moment exists where the session is out of the index.
-- KEYS[1]  the current session hash; KEYS[2] the new session hash; KEYS[3] the user's index
-- ARGV[1]  the user id the session must belong to; ARGV[2] the current id; ARGV[3] the new id
-- Returns  1 if moved, 0 if the current session does not exist (or belongs to someone else)
if redis.call('HGET', KEYS[1], 'user_id') ~= ARGV[1] then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
local left = redis.call('PTTL', KEYS[2])
if redis.call('PTTL', KEYS[3]) < left then
  redis.call('PEXPIRE', KEYS[3], left)
end
return 1
