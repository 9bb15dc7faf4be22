-- Re-deliver dead-lettered webhook deliveries of one tenant: each goes back to the due set with its
-- attempts reset and its event id unchanged, so receivers deduplicate it like any retry.
-- The 410 mark on the delivery's URL is lifted in the same step (asking for a replay says the
-- receiver is back), so no worker can claim it in between and dead-letter it again.
-- KEYS: 1 due zset, 2 dead zset.  ARGV: 1 now ms, 2 tenant, 3.. pairs of delivery id, URL's 410 mark key.
-- Returns a flat list {id, code, ...}: code 'ok' | 'not_dead' | 'missing'.
local out = {}
for i = 3, #ARGV, 2 do
  local id, mark = ARGV[i], ARGV[i + 1]
  local hk = K.webhook_delivery(id)
  local tenant = redis.call('HGET', hk, 'tenant')
  local code
  if not tenant or tenant ~= ARGV[2] then
    code = 'missing'
  elseif not redis.call('ZSCORE', KEYS[2], id) then
    code = 'not_dead'
  else
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    redis.call('HSET', hk, 'status', 'pending', 'attempts', 0, 'next_ms', ARGV[1], 'dead_ms', '')
    redis.call('HINCRBY', hk, 'replays', 1)
    if mark ~= '' then redis.call('DEL', mark) end
    code = 'ok'
  end
  out[#out + 1] = id
  out[#out + 1] = code
end
return out
