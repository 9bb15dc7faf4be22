-- Move jobs to a sibling lane (one serving the same model): each job leaves its lane's queue, or a
-- stalled batch of it, and joins the sibling's queue, its lane, provider, model and (adapted) body
-- rewritten; guarded by the expected prior state, the batch that still holds it and its lane, so a
-- job that finished, flipped or moved meanwhile is left alone. A job taken from a batch is no longer
-- that batch's: its answer there, if the batch still ends, is skipped and counted as duplicate spend,
-- as a flipped job's is. A job moves once at most (its `relanes` count): no ping-pong between
-- two lanes that lag in turn.
-- ARGV: 1 JSON array of items {id, from=[states], batch=?, lane (expected), to (lane), provider,
--       model, endpoint, b=? (ARGV index of the adapted body), prefix=? (its prefix group on the
--       sibling lane, which counts prefixes by its own settings)}, 2 now ms, 3.. adapted bodies
-- Returns one code per item: 'ok' | 'skip:<state>' | 'skip:relaned' | 'missing'.
-- uses: json, state
local items = cjson.decode(ARGV[1])
local now = ARGV[2]
local out = {}
local moved = false
for i, it in ipairs(items) do
  local jk = K.job(it.id)
  local rec = redis.call('HMGET', jk, 'state', 'batch_id', 'lane', 'deadline_ms', 'created_ms', 'size',
    'tenant', 'relanes')
  local state = rec[1]
  if not state then
    out[i] = 'missing'
  elseif rec[8] then
    out[i] = 'skip:relaned'
  elseif contains(it.from, state) and (opt(it.batch) == nil or opt(it.batch) == rec[2])
      and rec[3] == it.lane then
    if state == 'queued' then unqueue(it.id, rec[3], tonumber(rec[6])) end
    local size = tonumber(rec[6])
    if opt(it.b) then
      local body = ARGV[it.b]
      size = string.len(body)
      redis.call('HSET', jk, 'body', body, 'size', size)
    end
    redis.call('HSET', jk, 'state', 'queued', 'batch_id', '', 'lane', it.to, 'provider', it.provider,
      'model', it.model, 'endpoint', it.endpoint, 'relaned_from', rec[3], 'relaned_ms', now)
    if opt(it.prefix) ~= nil then redis.call('HSET', jk, 'prefix', it.prefix) end
    if state == 'batched' then redis.call('HSET', jk, 'relaned_from_batch', rec[2]) end
    redis.call('HINCRBY', jk, 'relanes', 1)
    redis.call('HINCRBY', K.lane_metrics(rec[3]), 'relaned', 1)
    redis.call('ZADD', K.lane_queue(it.to), rec[4], it.id)
    -- Its arrival stays its enqueue time: a moved job has waited already, the sibling flushes it at once.
    redis.call('ZADD', K.lane_arrivals(it.to), rec[5], it.id)
    redis.call('INCRBY', K.lane_bytes(it.to), size)
    revive_lane(it.to, jk, now)
    restate(it.id, rec[7], state, 'queued')
    moved = true
    out[i] = 'ok'
  else
    out[i] = 'skip:' .. state
  end
end
if moved then
  wake_scheduler()
end
return out
