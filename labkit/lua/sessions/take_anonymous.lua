-- Take an anonymous session for a login: read its fields and delete it at once, so that of two logins
-- racing on one anonymous id only one gets it; a logged-in session is left as it is.
-- KEYS[1]  the session hash
-- ARGV     none
-- Returns  {'anonymous', field, value, ...} once taken; {'user', <user id>} for a logged-in session;
--          {'missing'} if there is no session
local user = redis.call('HGET', KEYS[1], 'user_id')
if not user then
  return {'missing'}
end
if user ~= '' then
  return {'user', user}
end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
table.insert(fields, 1, 'anonymous')
return fields
