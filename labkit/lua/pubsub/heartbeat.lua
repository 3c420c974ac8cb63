-- Refresh a member's last sign of life to the server's clock; never adds a user who is not in the room
-- (swept, or never joined: that user must join again, which announces it).
-- KEYS[1]  the room's sorted set (member: a user; score: its last sign of life, in seconds, to the ms)
-- ARGV[1]  the user; ARGV[2] optional now in ms (tests only; else TIME)
-- Returns  1 if the user was in the room (refreshed), 0 if not (nothing added)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.3f', now_ms(ARGV[2]) / 1000), ARGV[1])
return 1
