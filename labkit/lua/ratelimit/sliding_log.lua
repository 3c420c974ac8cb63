-- Sliding log: at most LIMIT units in any window of WINDOW ms, one sorted-set entry per unit.
-- KEYS[1]  sorted set of admitted units scored by time ms
-- ARGV[1]  limit; ARGV[2] window ms; ARGV[3] cost; ARGV[4] optional now in ms (tests only; else TIME)
-- Returns  the string "<allowed 0/1> <remaining> <retry_after_ms> <reset_after_ms> <now_ms>"
-- Members are "<now>:<n>", n counting on from the entries in the window, so simultaneous requests get
-- distinct members without a second key; a member that exists already (possible only when a clock went
-- back) has this very score, and ZADD's count says so: the next n is tried. A denial records nothing (its
-- trim may drop entries that have left the window, as any request's does).
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used + cost > limit then
  -- the wait: until the entry whose exit makes room for `cost` leaves; the reset: until the oldest leaves
  local must_leave = used + cost - limit - 1
  local first = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
  local freeing = first
  if must_leave > 0 then
    freeing = tonumber(redis.call('ZRANGE', KEYS[1], must_leave, must_leave, 'WITHSCORES')[2])
  end
  return string.format('0 %d %d %d %d', limit - used, freeing + window - now, first + window - now, now)
end
-- one ZADD for up to 500 units (Lua's unpack has a stack limit), each member new unless a clock went back
local added, n = 0, used
while added < cost do
  local entries = {}
  for i = 1, math.min(cost - added, 500) do
    n = n + 1
    entries[2 * i - 1], entries[2 * i] = now, now .. ':' .. n
  end
  added = added + redis.call('ZADD', KEYS[1], unpack(entries))
end
redis.call('PEXPIRE', KEYS[1], window)
local oldest = now
if used > 0 then
  oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
end
return string.format('1 %d 0 %d %d', limit - used - cost, oldest + window - now, now)
