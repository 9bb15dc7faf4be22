-- A client batch (keys.client_batch) follows its jobs: each job's end bumps the batch's counters in
-- the same step, and the step that ends its last job (or that starts a batch whose jobs all ended
-- already) stamps ``ended_ms``. A GET then reads one hash, never the batch's jobs.

-- A batch with a callback URL gets one delivery (keys.webhook_delivery ``wh_<batch id>``, event id
-- ``msg_<batch id>``) when it ends, typed as OpenAI's batch events are: ``batch.completed``,
-- ``batch.cancelled`` (the client cancelled it) or ``batch.expired`` (its window passed first).
-- The webhook outbox sends it.
local function enqueue_batch_webhook(ck, now_ms)
  local rec = redis.call('HMGET', ck, 'id', 'tenant', 'callback_url', 'state', 'expires_ms')
  local url = rec[3]
  if not url or url == '' then return end
  local event_type = 'batch.completed'
  if rec[4] == 'cancelling' then
    event_type = 'batch.cancelled'
  elseif tonumber(now_ms) > tonumber(rec[5]) then
    event_type = 'batch.expired'
  end
  local did = 'wh_' .. rec[1]
  if redis.call('EXISTS', K.webhook_delivery(did)) == 1 then return end
  redis.call('HSET', K.webhook_delivery(did),
    'id', did, 'client_batch', rec[1], 'tenant', rec[2], 'url', url, 'event_id', 'msg_' .. rec[1],
    'type', event_type, 'created_ms', now_ms, 'attempts', 0, 'status', 'pending')
  redis.call('ZADD', K.WEBHOOKS_DUE, now_ms, did)
  redis.call('ZADD', K.tenant_deliveries(rec[2]), now_ms, did)
end

-- Stamp the batch's end once every line has ended; only a started batch (in_progress, cancelling)
-- ends: a validating batch's lines are still being enqueued, and its start checks again.
local function close_client_batch(ck, now_ms)
  local rec = redis.call('HMGET', ck, 'state', 'total', 'ended', 'ended_ms')
  if rec[1] ~= 'in_progress' and rec[1] ~= 'cancelling' then return end
  if rec[4] and rec[4] ~= '' then return end
  if tonumber(rec[3] or '0') >= tonumber(rec[2] or '0') then
    redis.call('HSET', ck, 'ended_ms', now_ms)
    enqueue_batch_webhook(ck, now_ms)
  end
end

-- A job (hash ``jk``) just ended in ``to_state`` (succeeded, failed, cancelled): count it on its
-- client batch, if it belongs to one. ``item`` (finish.lua's, absent for a cancel) adds its tokens
-- and cost, so the batch shows its usage and what it cost against the sync price.
local function client_batch_job_ended(jk, to_state, now_ms, item)
  local cb = redis.call('HGET', jk, 'client_batch')
  if not cb or cb == '' then return end
  local ck = K.client_batch(cb)
  if redis.call('EXISTS', ck) == 0 then return end
  redis.call('HINCRBY', ck, to_state, 1)
  redis.call('HINCRBY', ck, 'ended', 1)
  if item then  -- the same figures lib/costs.lua adds to the cost aggregates
    for _, name in ipairs({'input_tokens', 'output_tokens'}) do
      local n = tonumber(item[name]) or 0
      if n ~= 0 then redis.call('HINCRBY', ck, name, n) end
    end
    for field, name in pairs({actual_usd = 'actual_usd', sync_equivalent_usd = 'sync_usd',
        wasted_usd = 'wasted_usd'}) do
      local usd = tonumber(item[name]) or 0
      if usd ~= 0 then redis.call('HINCRBYFLOAT', ck, field, usd) end
    end
  end
  close_client_batch(ck, now_ms)
end
