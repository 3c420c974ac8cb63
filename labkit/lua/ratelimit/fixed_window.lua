-- Fixed window: at most LIMIT units per window; the window is aligned to the server's clock.
-- KEYS[1]  hash {start = window start ms, used = units admitted in it}
-- ARGV[1]  limit; ARGV[2] window ms; ARGV[3] cost; ARGV[4] optional now in ms (tests only; else TIME)
-- Returns  the string "<allowed 0/1> <remaining> <retry_after_ms> <reset_after_ms> <now_ms>"
-- The expiry is set when a window's first unit is written (the window's end); later units only count.
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms(ARGV[4])
local start = now - (now % window)
local saved = redis.call('HMGET', KEYS[1], 'start', 'used')
local same = tonumber(saved[1]) == start
local used = same and tonumber(saved[2]) or 0
local reset = start + window - now
if used + cost > limit then
  return string.format('0 %d %d %d %d', limit - used, reset, reset, now)
end
if same then
  redis.call('HINCRBY', KEYS[1], 'used', cost)
else
  redis.call('HSET', KEYS[1], 'start', start, 'used', cost)
  redis.call('PEXPIRE', KEYS[1], reset)
end
return string.format('1 %d 0 %d %d', limit - used - cost, reset, now)
