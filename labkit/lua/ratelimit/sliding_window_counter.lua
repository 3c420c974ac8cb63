-- Sliding window counter: the previous window's count, weighted by how much of it still overlaps the
-- sliding window, plus the current window's count, must stay within LIMIT.
-- KEYS[1]  hash {start = current window start ms, cur = units in it, prev = units in the window before}
-- ARGV[1]  limit; ARGV[2] window ms; ARGV[3] cost; ARGV[4] optional now in ms (tests only; else TIME)
-- Returns  the string "<allowed 0/1> <remaining> <retry_after_ms> <reset_after_ms> <now_ms>"
-- The expiry (the end of the window after this one) is set when a window's first unit is written.
local limit, window, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms(ARGV[4])
local start = now - (now % window)
local saved = redis.call('HMGET', KEYS[1], 'start', 'cur', 'prev')
local cur, prev = 0, 0
local same = tonumber(saved[1]) == start
if same then
  cur, prev = tonumber(saved[2]), tonumber(saved[3])
elseif tonumber(saved[1]) == start - window then
  prev = tonumber(saved[2])
end
local weight = (window - (now - start)) / window
local estimate = prev * weight + cur
local reset = start + window - now
if estimate + cost > limit then
  local wait
  if cur + cost <= limit then
    -- only the previous window's weighted share must shrink, by (estimate + cost - limit): prev/window per ms
    wait = math.ceil((estimate + cost - limit) * window / prev)
  else
    -- this window alone is full: at the next window's start it becomes `prev` with weight 1, so wait for
    -- that start and then for its share to shrink by (cur + cost - limit): cur/window per ms
    wait = reset + math.ceil((cur + cost - limit) * window / cur)
  end
  return string.format('0 %d %d %d %d', math.max(0, math.floor(limit - estimate)), wait, reset, now)
end
if same then
  redis.call('HINCRBY', KEYS[1], 'cur', cost)
else
  redis.call('HSET', KEYS[1], 'start', start, 'cur', cost, 'prev', prev)
  redis.call('PEXPIRE', KEYS[1], reset + window)
end
return string.format('1 %d 0 %d %d', math.max(0, math.floor(limit - estimate - cost)), reset, now)
