-- Delete the given sessions of one user and remove their ids from the user's index, at once. Ids added
-- to the index meanwhile (a login racing the log-out) stay indexed, so a later call still finds them.
-- KEYS[1]  the user's index; KEYS[2..] the session hashes (same hash tag)
-- ARGV[1..] the session ids, in the order of KEYS[2..]
-- Returns  how many of the sessions still existed
local deleted = redis.call('DEL', unpack(KEYS, 2))
redis.call('SREM', KEYS[1], unpack(ARGV))
return deleted
