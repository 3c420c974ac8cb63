-- Fill a cache entry only if the reader's lease is still there: a write to the source deletes the entry
-- AND its lease, so a reader that read the source before the write can no longer store what it read.
-- KEYS[1]  the cache entry (a hash), KEYS[2]  its lease (same hash tag: one slot on a cluster)
-- ARGV[1]  the lease token the reader took, ARGV[2]  the value (JSON), ARGV[3]  the entry's TTL in ms
-- Returns  1 if the entry was written, 0 if the lease was gone or not this reader's (nothing written)
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
return 1
