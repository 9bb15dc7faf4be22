-- Finish a chunk of jobs: only a job still in an expected state (and, for batch results, still in
-- that batch) moves; anything else changes nothing, and a billed result for it counts as duplicate
-- spend. This file is the guard and the job's state and result; each other concern of a job's end
-- is a library, composed into this one script (scheduler/ledger/scripts.py says why): costs and budgets
-- (lib/costs.lua, lib/budget.lua), lane metrics and SLO buckets (lib/metrics.lua), the webhook
-- outbox and pub/sub (lib/outbox.lua), and a deduplicated group's followers and cost shares
-- (lib/dedup.lua). They move in the same step, gated by the same guard, so every aggregate always
-- equals the jobs' sums.
-- uses: json, state, costs, metrics, outbox, dedup, client_batch
-- ARGV: 1 JSON array of items, 2 now ms, 3 result ttl ms, 4 day (YYYY-MM-DD), 5 month (YYYY-MM),
--       6 SLO bucket width s, 7 aggregate ttl s, 8 seconds an ended job record is kept (retention),
--       9.. blobs: result bodies, usage, cost (raw JSON)
-- item: {id, from=[states], batch=?, r=?, u=?, c=? (ARGV indexes of its result, usage, cost),
--        state, route, error=?,
--        input_tokens, output_tokens, cached_tokens, actual_usd, sync_usd, billed, wasted_usd}
-- Returns one code per item: 'ok' | 'skip:<state>' | 'missing'.
local items = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
local ttl = ARGV[3]
local job_ttl = ARGV[8]
local costs = new_costs(ARGV[4], ARGV[5], tonumber(ARGV[7]))
local lane_metrics = new_lane_metrics(now, tonumber(ARGV[6]))
local restates = new_restates()

local out, ended = {}, {}

-- Record one job's end (its state, result and figures); ``state`` is the one it leaves.
local function record_end(id, jk, state, job, rec, it, cost_blob)
  local fields = {'state', it.state, 'route', it.route, 'completed_ms', now}
  if opt(it.u) then fields[#fields + 1] = 'usage'; fields[#fields + 1] = ARGV[it.u] end
  if cost_blob then fields[#fields + 1] = 'cost'; fields[#fields + 1] = cost_blob end
  if opt(it.error) then fields[#fields + 1] = 'error'; fields[#fields + 1] = it.error end
  redis.call('HSET', jk, unpack(fields))
  if opt(it.r) then redis.call('SET', K.result(id), ARGV[it.r], 'PX', ttl) end
  restates.move(id, rec[3], state, it.state)
  retain(jk, job_ttl)
  local on_time = now <= tonumber(rec[7])
  costs.ended(job, it, on_time)
  lane_metrics.ended(job, it, on_time)
  enqueue_webhook(id, it.state == 'succeeded' and 'job.succeeded' or 'job.failed', now, rec[10], rec[3])
  if rec[15] and rec[15] ~= '' then client_batch_job_ended(jk, it.state, now, it) end
  ended[#ended + 1] = id
end

local FIELDS = {'state', 'batch_id', 'tenant', 'feature', 'lane', 'model', 'deadline_ms', 'size',
  'created_ms', 'callback_url', 'reserve_usd', 'reserve_key', 'dedup_digest', 'dedup_cost', 'client_batch'}

local function job_of(jk, rec)
  return {key = jk, tenant = rec[3], feature = rec[4], lane = rec[5], model = rec[6],
    created_ms = tonumber(rec[9]), reserve_usd = rec[11], reserve_key = rec[12]}
end

for i, it in ipairs(items) do
  local jk = K.job(it.id)
  local rec = redis.call('HMGET', jk, unpack(FIELDS))
  local state = rec[1]
  if not state then
    out[i] = 'missing'
  else
    local job = job_of(jk, rec)
    local batch = opt(it.batch)
    if contains(it.from, state) and (batch == nil or batch == rec[2]) then
      if state == 'queued' then unqueue(it.id, rec[5], tonumber(rec[8])) end
      if state == 'sync' then redis.call('ZREM', K.SYNC_QUEUE, it.id) end
      local cost_blob = opt(it.c) and ARGV[it.c] or nil
      -- Followers of a deduplicated group end with their leader, in this step (lib/dedup.lua).
      local waiting = {}
      if rec[13] and rec[13] ~= '' then
        waiting = dedup_waiting(it.id)
        redis.call('DEL', K.dedup_followers(it.id))
        dedup_forget(it.id, rec[3], rec[13])
      end
      if #waiting > 0 then
        local group = dedup_group_costs(it, cost_blob, #waiting + 1, rec[14])
        record_end(it.id, jk, state, job, rec, group.leader, group.leader_cost)
        for _, f in ipairs(waiting) do
          local fk = K.job(f.id)
          local frec = redis.call('HMGET', fk, unpack(FIELDS))
          record_end(f.id, fk, 'queued', job_of(fk, frec), frec, group.follower, group.follower_cost)
        end
      else
        record_end(it.id, jk, state, job, rec, it, cost_blob)
      end
      out[i] = 'ok'
    else
      if it.billed then
        costs.duplicate(job, it.route, num(it.actual_usd))
        lane_metrics.duplicate(job.lane, num(it.actual_usd))
      end
      out[i] = 'skip:' .. state
    end
  end
end
restates.flush()
costs.flush()
lane_metrics.flush()
announce_ended(ended)
return out
