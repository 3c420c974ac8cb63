-- Fixed window: at most LIMIT units per window; the window is aligned to the server's clock.
-- KEYS[1]  hash {start = window start ms, used = units admitted in it}
-- ARGV[1]  limit; ARGV[2] window ms; ARGV[3] cost; ARGV[4] optional now in ms (tests only; else TIME)
-- Returns  {allowed 0/1, remaining, retry_after_ms, reset_after_ms, now_ms}
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms(ARGV[4])
local start = now - (now % window)
local used = 0
if tonumber(redis.call('HGET', KEYS[1], 'start')) == start then
  used = tonumber(redis.call('HGET', KEYS[1], 'used'))
end
local reset = start + window - now
if used + cost > limit then
  return {0, limit - used, reset, reset, now}
end
redis.call('HSET', KEYS[1], 'start', start, 'used', used + cost)
redis.call('PEXPIRE', KEYS[1], reset)
return {1, limit - used - cost, 0, reset, now}
