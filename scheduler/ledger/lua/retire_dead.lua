-- Bound the webhook dead letters: those dead before a cutoff, and the oldest beyond a cap, are deleted
-- with their delivery record and their place in the tenant's deliveries index.
-- KEYS: 1 the dead-letter zset.  ARGV: 1 cutoff ms, 2 cap, 3 most to delete in this step.
-- Returns the number deleted.
local limit = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, limit)
local over = redis.call('ZCARD', KEYS[1]) - #ids - tonumber(ARGV[2])
if over > 0 and #ids < limit then
  local extra = redis.call('ZRANGE', KEYS[1], #ids, #ids + math.min(over, limit - #ids) - 1)
  for _, id in ipairs(extra) do ids[#ids + 1] = id end
end
for _, id in ipairs(ids) do
  local tenant = redis.call('HGET', K.webhook_delivery(id), 'tenant')
  if tenant then redis.call('ZREM', K.tenant_deliveries(tenant), id) end
  redis.call('DEL', K.webhook_delivery(id))
  redis.call('ZREM', KEYS[1], id)
end
return #ids
