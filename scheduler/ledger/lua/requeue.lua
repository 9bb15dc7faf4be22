-- Send jobs back to their lane (a retriable failure) or on to the sync lane (a flip), guarded by
-- the expected prior state and, for batch results, the batch that still holds the job.
-- ARGV: 1 JSON array of items {id, from=[states], batch=?, target='lane'|'sync', attempt=bool,
--       error=?}, 2 now ms
-- Returns one code per item: 'ok' | 'skip:<state>' | 'missing'.
-- uses: json, state
local items = cjson.decode(ARGV[1])
local now = ARGV[2]
local out = {}
local woke = false
for i, it in ipairs(items) do
  local jk = K.job(it.id)
  local rec = redis.call('HMGET', jk, 'state', 'batch_id', 'lane', 'deadline_ms', 'created_ms', 'size',
    'tenant')
  local state = rec[1]
  if not state then
    out[i] = 'missing'
  elseif contains(it.from, state) and (opt(it.batch) == nil or opt(it.batch) == rec[2]) then
    if it.attempt then redis.call('HINCRBY', jk, 'attempts', 1) end
    if opt(it.error) then redis.call('HSET', jk, 'last_error', it.error) end
    if it.target == 'lane' then
      if state == 'sync' then redis.call('ZREM', K.SYNC_QUEUE, it.id) end
      if state ~= 'queued' then
        redis.call('ZADD', K.lane_queue(rec[3]), rec[4], it.id)
        redis.call('ZADD', K.lane_arrivals(rec[3]), rec[5], it.id)
        redis.call('INCRBY', K.lane_bytes(rec[3]), rec[6])
        revive_lane(rec[3], jk, now)
      end
      redis.call('HSET', jk, 'state', 'queued', 'batch_id', '')
      restate(it.id, rec[7], state, 'queued')
      woke = true
    else
      if state == 'queued' then unqueue(it.id, rec[3], tonumber(rec[6])) end
      redis.call('ZADD', K.SYNC_QUEUE, rec[4], it.id)
      redis.call('HSET', jk, 'state', 'sync', 'route', 'sync', 'flipped_ms', now)
      restate(it.id, rec[7], state, 'sync')
    end
    out[i] = 'ok'
  else
    out[i] = 'skip:' .. state
  end
end
if woke then
  wake_scheduler()
end
return out
