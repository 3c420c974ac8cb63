-- Sliding log: at most LIMIT units in any window of WINDOW ms, one sorted-set entry per unit.
-- KEYS[1]  sorted set of admitted units scored by time ms; KEYS[2] a sequence counter (same hash tag)
-- ARGV[1]  limit; ARGV[2] window ms; ARGV[3] cost; ARGV[4] optional now in ms (tests only; else TIME)
-- Returns  {allowed 0/1, remaining, retry_after_ms, reset_after_ms, now_ms}
-- Members are "<now>:<sequence>", unique even for simultaneous requests. A denial records nothing (its trim
-- may drop entries that have left the window, as any request's does).
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used + cost > limit then
  local oldest = redis.call('ZRANGE', KEYS[1], used + cost - limit - 1, used + cost - limit - 1, 'WITHSCORES')
  local wait = tonumber(oldest[2]) + window - now
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, limit - used, wait, tonumber(first[2]) + window - now, now}
end
local seq = redis.call('INCRBY', KEYS[2], cost)
for i = 1, cost do
  redis.call('ZADD', KEYS[1], now, now .. ':' .. (seq - cost + i))
end
redis.call('PEXPIRE', KEYS[1], window)
redis.call('PEXPIRE', KEYS[2], window)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {1, limit - used - cost, 0, tonumber(first[2]) + window - now, now}
