-- Trim a tenant's webhook deliveries created before a cutoff: records that are gone leave the index;
-- deliveries that are over (delivered, dead, disabled) and neither due again nor a dead letter are
-- deleted; pending and failing ones stay (they still have attempts to make), and dead letters stay
-- for their own age limit and cap (retire_dead.lua).
-- KEYS: 1 the tenant's deliveries zset, 2 the due zset, 3 the dead-letter zset.
-- ARGV: 1 cutoff ms (created before it), 2 offset (entries already kept this pass), 3 most to examine.
-- Returns {examined, removed, deleted, kept}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', tonumber(ARGV[2]),
  tonumber(ARGV[3]))
local removed, deleted, kept = 0, 0, 0
for _, id in ipairs(ids) do
  local status = redis.call('HGET', K.webhook_delivery(id), 'status')
  if not status then
    redis.call('ZREM', KEYS[1], id)
    removed = removed + 1
  elseif (status == 'delivered' or status == 'dead' or status == 'disabled')
      and not redis.call('ZSCORE', KEYS[2], id) and not redis.call('ZSCORE', KEYS[3], id) then
    redis.call('DEL', K.webhook_delivery(id))
    redis.call('ZREM', KEYS[1], id)
    deleted = deleted + 1
  else
    kept = kept + 1
  end
end
return {#ids, removed, deleted, kept}
