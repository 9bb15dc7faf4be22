-- Shared helpers prepended to every ledger script. PREFIX is defined before this file by the loader.
-- Key names mirror scheduler/keys.py; they are built here because a job's lane is only known
-- from its record. (Standalone Redis; under Cluster a lane's keys share the {lane} hash tag.)

local function k_job(id) return PREFIX .. ':job:' .. id end
local function k_result(id) return PREFIX .. ':result:' .. id end
local function k_queue(lane) return PREFIX .. ':lane:{' .. lane .. '}:queue' end
local function k_arrivals(lane) return PREFIX .. ':lane:{' .. lane .. '}:arrivals' end
local function k_bytes(lane) return PREFIX .. ':lane:{' .. lane .. '}:bytes' end
local K_SYNC_QUEUE = PREFIX .. ':sync:queue'
local K_WEBHOOKS_DUE = PREFIX .. ':webhooks:due'
local function k_delivery(id) return PREFIX .. ':webhook:' .. id end
local function k_tenant_deliveries(t) return PREFIX .. ':tenant:' .. t .. ':deliveries' end

local function contains(list, value)
  for _, v in ipairs(list) do
    if v == value then return true end
  end
  return false
end

-- Take a job out of its lane queue (it was `queued`): the queue, the arrival index and the byte counter.
local function unqueue(id, lane, size)
  if redis.call('ZREM', k_queue(lane), id) == 1 then
    redis.call('ZREM', k_arrivals(lane), id)
    redis.call('DECRBY', k_bytes(lane), size)
  end
end

-- Tell long polls (keys.JOBS_ENDED) which jobs just ended: one message a step, ids space-separated.
local function announce_ended(ids)
  if #ids > 0 then redis.call('PUBLISH', PREFIX .. ':jobs:ended', table.concat(ids, ' ')) end
end

-- A terminal job with a callback URL gets one delivery record; its event id never changes.
-- ``url`` and ``tenant`` may be passed when the caller already read them (false: no callback).
local function enqueue_webhook(id, event_type, now_ms, url, tenant)
  if url == nil then url = redis.call('HGET', k_job(id), 'callback_url') end
  if not url or url == '' then return end
  if not tenant then tenant = redis.call('HGET', k_job(id), 'tenant') end
  local did = 'wh_' .. id
  if redis.call('EXISTS', k_delivery(did)) == 1 then return end
  redis.call('HSET', k_delivery(did),
    'id', did, 'job_id', id, 'tenant', tenant, 'url', url, 'event_id', 'msg_' .. id,
    'type', event_type, 'created_ms', now_ms, 'attempts', 0, 'status', 'pending')
  redis.call('ZADD', K_WEBHOOKS_DUE, now_ms, did)
  redis.call('ZADD', k_tenant_deliveries(tenant), now_ms, did)
end

-- Per-tenant listing indexes (keys.tenant_status, keys.tenant_feature): sorted sets with all scores 0,
-- so ids (time-sortable) list newest first by lex order. Every step that changes a job's state moves
-- its id from the old state's index to the new one's, in the same step.
local function k_tenant_jobs(t) return PREFIX .. ':tenant:' .. t .. ':jobs' end
local function k_tenant_status(t, state) return PREFIX .. ':tenant:' .. t .. ':status:' .. state end
local function k_tenant_feature(t, f) return PREFIX .. ':tenant:' .. t .. ':feature:' .. f end

local function restate(id, tenant, from, to)
  if not tenant or from == to then return end
  if from then redis.call('ZREM', k_tenant_status(tenant, from), id) end
  redis.call('ZADD', k_tenant_status(tenant, to), 0, id)
end

-- A job that ended keeps its record (status, usage, cost) for ``ttl_s`` seconds, without the request
-- body: nothing resubmits an ended job, and the body is most of the record's memory.
local function retain(id, ttl_s)
  redis.call('HDEL', k_job(id), 'body')
  if ttl_s and tonumber(ttl_s) and tonumber(ttl_s) > 0 then redis.call('EXPIRE', k_job(id), ttl_s) end
end

-- Release the budget a job reserved at enqueue (keys.budget_committed) once it ends; only once,
-- since the fields go with it.
local function release_reservation(jk)
  local held = redis.call('HMGET', jk, 'reserve_usd', 'reserve_key')
  if held[1] and held[2] and held[2] ~= '' then
    redis.call('INCRBYFLOAT', held[2], -tonumber(held[1]))
    redis.call('HDEL', jk, 'reserve_usd', 'reserve_key')
  end
end

-- A job goes back to its lane: make sure the lane is registered and active again (the tick may
-- have pruned it while the job was in sync). NX: a lane still active keeps its last enqueue time;
-- it cannot be pruned while it holds this job anyway. Meta comes from the job's own record.
local function revive_lane(lane, jk, now_ms)
  if redis.call('ZADD', PREFIX .. ':lanes:active', 'NX', now_ms, lane) == 1 then
    redis.call('SADD', PREFIX .. ':lanes', lane)
    local meta = redis.call('HMGET', jk, 'provider', 'model', 'endpoint')
    local mk = PREFIX .. ':lane:{' .. lane .. '}:meta'
    redis.call('HSETNX', mk, 'provider', meta[1])
    redis.call('HSETNX', mk, 'model', meta[2])
    redis.call('HSETNX', mk, 'endpoint', meta[3])
  end
end
