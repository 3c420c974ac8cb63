-- Add a member to a presence room with the server's clock as its last sign of life, and announce it on
-- the room's channel: one step, one round trip, and no client clock involved.
-- KEYS[1]  the room's sorted set (member: a user; score: its last sign of life, in seconds, to the ms)
-- ARGV[1]  the user; ARGV[2] the room's channel
-- Returns  how many subscribers heard "join:<user>"
redis.call('ZADD', KEYS[1], string.format('%.3f', now_ms() / 1000), ARGV[1])
return redis.call('PUBLISH', ARGV[2], 'join:' .. ARGV[1])
