-- Reserving queued jobs into a planned batch, shared by reserve_batch.lua (earliest deadline first)
-- and reserve_jobs.lua (the planner's chosen order). Both scripts take the same KEYS: 2 lane queue,
-- 3 lane arrivals, 4 lane bytes, 5 batch, 6 batch jobs, 7 planned batches zset.
-- uses: state

-- After a call that took jobs: the batch record exists (created planned on its first call, for the
-- lane, provider, model and endpoint given) and holds the running request and byte counts, and how
-- many of its jobs carry a prompt prefix (``prefixed``: none lets the submission skip reading them).
local function reserve_record(batch_id, now, lane, provider, model, endpoint, count, bytes, prefixed)
  if redis.call('EXISTS', KEYS[5]) == 0 then
    redis.call('HSET', KEYS[5], 'id', batch_id, 'state', 'planned', 'lane', lane, 'provider', provider,
      'model', model, 'endpoint', endpoint, 'planned_ms', now, 'attempts', 0)
    redis.call('ZADD', KEYS[7], now, batch_id)
  end
  redis.call('HSET', KEYS[5], 'requests', count, 'bytes', bytes)
  redis.call('HINCRBY', KEYS[5], 'prefixed', prefixed)
end

-- The jobs one call moves out of its lane into batch ``batch_id``, within the batch's caps
-- (``max_requests``, ``max_bytes``, each line costing ``overhead`` bytes beyond its body), counted on
-- from what the batch already holds.
-- queued(id): the job's record key, size, tenant and prompt prefix while it is queued; else nil,
--   and a stale index entry (the job left the queue) is dropped from the lane's indexes, not ours to move.
-- fits(size): whether a job of ``size`` bytes still fits (a lone job larger than the byte cap still
--   goes alone; the provider's refusal then fails it).
-- take(id, jk, tenant, size, deadline, prefix): moves queued job ``id`` (record ``jk``, of
--   ``tenant``, ``size`` bytes, due at ``deadline`` ms, its lane queue score, with prompt ``prefix``):
--   its record at once; its lane indexes, byte counter, listing indexes, the batch's job set and the
--   batch's deadline index (keys.batch_deadlines, which the SLO tracker would otherwise build from
--   the job records on its first sight of the batch) once for all at finish(), one command per key
--   rather than six per job. Nothing in the call may read those keys in between for a job it took
--   (a later read of the lane queue would still see it).
-- finish(full, lane, provider, model, endpoint): writes those and the batch record; returns the
--   scripts' reply {'ok', jobs taken, bytes taken, full}, ``full`` 1 once the request cap is reached
--   whatever the loop ended on.
local function new_reserver(batch_id, now, max_requests, max_bytes, overhead)
  local have = redis.call('HMGET', KEYS[5], 'requests', 'bytes')
  local count, bytes = tonumber(have[1] or '0'), tonumber(have[2] or '0')
  local ids, scored, total = {}, {}, 0
  local restates = new_restates()
  local prefixed = 0  -- how many of the jobs taken carry a prompt prefix
  local r = {}

  function r.queued(id)
    local jk = K.job(id)
    local rec = redis.call('HMGET', jk, 'state', 'size', 'tenant', 'prefix')
    if rec[1] ~= 'queued' then
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', KEYS[3], id)
      return nil
    end
    return jk, tonumber(rec[2] or '0'), rec[3], rec[4]
  end

  function r.fits(size)
    return count < max_requests and (count == 0 or bytes + size + overhead <= max_bytes)
  end

  function r.take(id, jk, tenant, size, deadline, prefix)
    redis.call('HSET', jk, 'state', 'batched', 'batch_id', batch_id, 'batched_ms', now)
    ids[#ids + 1] = id
    scored[#scored + 1] = deadline
    scored[#scored + 1] = id
    total = total + size
    count = count + 1
    bytes = bytes + size + overhead
    if prefix and prefix ~= '' then prefixed = prefixed + 1 end
    restates.move(id, tenant, 'queued', 'batched')
  end

  local function flush()
    if #ids == 0 then return end
    for i = 1, #ids, 1000 do
      local last = math.min(i + 999, #ids)
      redis.call('ZREM', KEYS[2], unpack(ids, i, last))
      redis.call('ZREM', KEYS[3], unpack(ids, i, last))
      redis.call('SADD', KEYS[6], unpack(ids, i, last))
    end
    local index = K.batch_deadlines(batch_id)
    for i = 1, #scored, 1000 do
      redis.call('ZADD', index, unpack(scored, i, math.min(i + 999, #scored)))
    end
    redis.call('EXPIRE', index, K.BATCH_DEADLINES_TTL_S)
    redis.call('DECRBY', KEYS[4], total)
    restates.flush()
  end

  function r.finish(full, lane, provider, model, endpoint)
    flush()
    if #ids > 0 then
      reserve_record(batch_id, now, lane, provider, model, endpoint, count, bytes, prefixed)
    end
    if full == 0 and count >= max_requests then full = 1 end
    return {'ok', #ids, total, full}
  end

  return r
end
