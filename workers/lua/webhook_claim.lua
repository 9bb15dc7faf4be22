-- Claim a slice of due webhook deliveries: move each one's score to the lease's end, so a worker
-- that dies with claims in hand gives them back by itself when the lease runs out.
-- KEYS: 1 the due zset (keys.WEBHOOKS_DUE).
-- ARGV: 1 now ms, 2 lease end ms, 3 most to claim, 4 claim token, 5 delivery hash key prefix.
-- Returns the claimed delivery ids.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  redis.call('HSET', ARGV[5] .. id, 'lease', ARGV[4])
end
return ids
