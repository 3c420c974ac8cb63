-- GCRA (generic cell rate algorithm): one timestamp per key, the theoretical arrival time (TAT) of the
-- next unit at the steady rate; a burst of BURST units may arrive early.
-- KEYS[1]  string: TAT in ms
-- ARGV[1]  burst; ARGV[2] ms per unit (the emission interval); ARGV[3] cost; ARGV[4] optional now ms (tests)
-- Returns  the string "<allowed 0/1> <remaining> <retry_after_ms> <reset_after_ms> <now_ms>"
local burst, interval, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms(ARGV[4])
local stored = redis.call('GET', KEYS[1])
local tat = tonumber(stored or now)
if not tat then  -- another program's string under the key: say so, rather than fail on a nil in math.max
  return redis.error_reply('ERR GCRA key ' .. KEYS[1] .. ' holds a string that is not a timestamp in ms: '
    .. 'another program writes it; give the limiter its own prefix (or delete the key)')
end
tat = math.max(tat, now)
local new_tat = tat + cost * interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  local remaining = math.floor((now - (tat - burst * interval)) / interval)
  return string.format('0 %d %d %d %d', math.max(0, remaining), math.ceil(allow_at - now), math.ceil(tat - now), now)
end
-- %.17g keeps every bit of the TAT (tostring keeps 14 digits: 0.1 ms at epoch-ms scale, which drifts)
local reset = math.ceil(new_tat - now)
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', reset + 1)
local remaining = math.floor((now - (new_tat - burst * interval)) / interval)
return string.format('1 %d 0 %d %d', math.max(0, remaining), reset, now)
