-- Reserving queued jobs into a planned batch, shared by reserve_batch.lua (earliest deadline first)
-- and reserve_jobs.lua (the planner's chosen order). Both scripts take the same KEYS: 2 lane queue,
-- 3 lane arrivals, 4 lane bytes, 5 batch, 6 batch jobs, 7 planned batches zset.
-- uses: state

-- Move queued job ``id`` (of ``tenant``, ``size`` bytes) out of its lane into batch ``batch_id``.
local function reserve_job(id, tenant, size, batch_id, now)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('DECRBY', KEYS[4], size)
  redis.call('HSET', K.job(id), 'state', 'batched', 'batch_id', batch_id, 'batched_ms', now)
  restate(id, tenant, 'queued', 'batched')
  redis.call('SADD', KEYS[6], id)
end

-- After a call that took jobs: the batch record exists (created planned on its first call, for the
-- lane, provider, model and endpoint given) and holds the running request and byte counts.
local function reserve_record(batch_id, now, lane, provider, model, endpoint, count, bytes)
  if redis.call('EXISTS', KEYS[5]) == 0 then
    redis.call('HSET', KEYS[5], 'id', batch_id, 'state', 'planned', 'lane', lane, 'provider', provider,
      'model', model, 'endpoint', endpoint, 'planned_ms', now, 'attempts', 0)
    redis.call('ZADD', KEYS[7], now, batch_id)
  end
  redis.call('HSET', KEYS[5], 'requests', count, 'bytes', bytes)
end
