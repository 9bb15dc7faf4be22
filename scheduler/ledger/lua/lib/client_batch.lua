-- A client batch (keys.client_batch) follows its jobs: each job's end bumps the batch's counters in
-- the same step, and the step that ends its last job (or that starts a batch whose jobs all ended
-- already) stamps ``ended_ms``. A GET then reads one hash, never the batch's jobs.

-- Stamp the batch's end once every line has ended; only a started batch (in_progress, cancelling)
-- ends: a validating batch's lines are still being enqueued, and its start checks again.
local function close_client_batch(ck, now_ms)
  local rec = redis.call('HMGET', ck, 'state', 'total', 'ended', 'ended_ms')
  if rec[1] ~= 'in_progress' and rec[1] ~= 'cancelling' then return end
  if rec[4] and rec[4] ~= '' then return end
  if tonumber(rec[3] or '0') >= tonumber(rec[2] or '0') then
    redis.call('HSET', ck, 'ended_ms', now_ms)
  end
end

-- A job (hash ``jk``) just ended in ``to_state`` (succeeded, failed, cancelled): count it on its
-- client batch, if it belongs to one.
local function client_batch_job_ended(jk, to_state, now_ms)
  local cb = redis.call('HGET', jk, 'client_batch')
  if not cb or cb == '' then return end
  local ck = K.client_batch(cb)
  if redis.call('EXISTS', ck) == 0 then return end
  redis.call('HINCRBY', ck, to_state, 1)
  redis.call('HINCRBY', ck, 'ended', 1)
  close_client_batch(ck, now_ms)
end
