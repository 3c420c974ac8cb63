-- Move a session to a new id (same fields, same TTL); the old id stops working at once.
-- KEYS[1]  the current session hash; KEYS[2] the new session hash
-- ARGV     none
-- Returns  the session's user_id, or false if the current session does not exist
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
redis.call('RENAME', KEYS[1], KEYS[2])
return redis.call('HGET', KEYS[2], 'user_id')
