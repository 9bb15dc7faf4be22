-- Cancel a job that is queued, batched or sync. A batch still holding it discards its result later.
-- A deduplicated follower leaves its group; a group's leader hands it to its earliest-due follower,
-- which takes its place in the lane queue (lib/dedup.lua), so no follower is left waiting.
-- KEYS: 1 job.  ARGV: 1 job id, 2 now ms, 3 seconds the ended record is kept (retention).
-- Returns {'ok', prior state} | {'refused', state} | {'missing', ''}.
-- uses: state, budget, outbox, dedup, client_batch
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
if not contains({'queued', 'batched', 'sync'}, state) then return {'refused', state} end
local id = ARGV[1]
if state == 'queued' then
  local lane = redis.call('HGET', KEYS[1], 'lane')
  unqueue(id, lane, tonumber(redis.call('HGET', KEYS[1], 'size')))
elseif state == 'batched' then
  -- The SLO tracker's deadline index of the batch forgets it, so a batch whose jobs were all
  -- cancelled (or flipped) is cancelled at the provider too.
  local batch = redis.call('HGET', KEYS[1], 'batch_id')
  if batch then redis.call('ZREM', K.batch_deadlines(batch), id) end
elseif state == 'sync' then
  redis.call('ZREM', K.SYNC_QUEUE, id)
end
local group = redis.call('HMGET', KEYS[1], 'dedup_of', 'dedup_digest', 'tenant')
if group[1] and group[1] ~= '' then
  redis.call('SREM', K.dedup_followers(group[1]), id)
elseif group[2] and group[2] ~= '' then
  dedup_promote(id, group[3], group[2], tonumber(ARGV[2]))
end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'completed_ms', ARGV[2])
release_reservation(KEYS[1])
restate(id, redis.call('HGET', KEYS[1], 'tenant'), state, 'cancelled')
retain(KEYS[1], ARGV[3])
enqueue_webhook(id, 'job.cancelled', ARGV[2])
client_batch_job_ended(KEYS[1], 'cancelled', ARGV[2])
announce_ended({id})
return {'ok', state}
