-- Delete batches that ended before a cutoff: the record, its job set, its ingestion cursor, its SLO
-- deadline index and its entry in the provider-id map (only while that entry still names this batch).
-- A batch no longer in an end state (sent back to planned) only leaves the ended index.
-- KEYS: 1 ended zset, 2 failed zset.  ARGV: 1 cutoff ms, 2 most to examine.
-- Returns the number of batches deleted.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local deleted = 0
for _, id in ipairs(ids) do
  local bk = K.batch(id)
  local rec = redis.call('HMGET', bk, 'state', 'provider', 'provider_batch_id')
  local state = rec[1]
  if not state or state == 'ingested' or state == 'failed' or state == 'cancelled' then
    if rec[2] and rec[3] and rec[3] ~= '' then
      local map = K.provider_batches(rec[2])
      if redis.call('HGET', map, rec[3]) == id then redis.call('HDEL', map, rec[3]) end
    end
    redis.call('DEL', bk, K.batch_jobs(id), K.batch_cursor(id), K.batch_deadlines(id))
    redis.call('ZREM', KEYS[2], id)
    deleted = deleted + 1
  end
  redis.call('ZREM', KEYS[1], id)
end
return deleted
