-- Token bucket: a bucket of BURST tokens refilled at RATE per second; each unit takes one token.
-- KEYS[1]  hash {tokens = tokens left (fractional), ts = time ms of that count}
-- ARGV[1]  burst (capacity); ARGV[2] ms per token; ARGV[3] cost; ARGV[4] optional now ms (tests; else TIME)
-- Returns  the string "<allowed 0/1> <remaining> <retry_after_ms> <reset_after_ms> <now_ms>"
local burst, per_token, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms(ARGV[4])
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = burst
if saved[1] then
  -- a clock that went back (an NTP step, a failover to a primary whose clock is behind) refills nothing
  tokens = math.min(burst, tonumber(saved[1]) + math.max(0, now - tonumber(saved[2])) / per_token)
end
if tokens < cost then
  return string.format('0 %d %d %d %d', math.floor(tokens), math.ceil((cost - tokens) * per_token),
                       math.ceil((burst - tokens) * per_token), now)
end
tokens = tokens - cost
-- the expiry moves with every write: the key lives until the bucket would be full again
local full = math.ceil((burst - tokens) * per_token)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], full + 1)
return string.format('1 %d 0 %d %d', math.floor(tokens), full, now)
