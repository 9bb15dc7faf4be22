-- Trim one per-tenant job index (all ids, one state's, or one feature's) up to a retention cutoff.
-- For each id older than the cutoff (ids sort by creation time): a record that is gone (its TTL ran
-- out) leaves the index; a record that ended before the cutoff is deleted with its result, and leaves
-- every index of its tenant in the same step; anything else (still live, or ended recently) stays.
-- KEYS: 1 the index, 2 the tenant's feature-index set ('' for none).
-- ARGV: 1 lex lower bound ('-' or '(<id>'), 2 lex upper bound ('(<id prefix of the cutoff>'),
--       3 cutoff ms (ended before it: deleted), 4 most ids to examine.
-- Returns {examined, removed (index entries of gone records), deleted (records), last id or ''}.
local cutoff = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local removed, deleted = 0, 0
for _, id in ipairs(ids) do
  local rec = redis.call('HMGET', K.job(id), 'state', 'tenant', 'feature', 'completed_ms')
  local state = rec[1]
  if not state then
    redis.call('ZREM', KEYS[1], id)
    redis.call('DEL', K.result(id))  -- a result never outlives its job
    removed = removed + 1
  elseif (state == 'succeeded' or state == 'failed' or state == 'cancelled')
      and tonumber(rec[4] or '') and tonumber(rec[4]) < cutoff then
    local tenant = rec[2]
    redis.call('DEL', K.job(id), K.result(id))
    redis.call('ZREM', K.tenant_jobs(tenant), id)
    redis.call('ZREM', K.tenant_status(tenant, state), id)
    if rec[3] and rec[3] ~= '' then redis.call('ZREM', K.tenant_feature(tenant, rec[3]), id) end
    redis.call('ZREM', KEYS[1], id)
    deleted = deleted + 1
  end
end
-- An emptied feature index is gone (Redis removes empty sorted sets): forget its name too.
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], KEYS[1]) end
return {#ids, removed, deleted, ids[#ids] or ''}
