-- A job's state and the indexes that follow it: the guard's allowed-state check, the lane queue
-- (queue, arrivals, bytes), the tenant's per-state listing indexes, retention of an ended record,
-- and the registry of active lanes a job coming back revives.
-- Standalone Redis; under Cluster a lane's keys share the {lane} hash tag (keys.py).

local function contains(list, value)
  for _, v in ipairs(list) do
    if v == value then return true end
  end
  return false
end

-- Take a job out of its lane queue (it was `queued`): the queue, the arrival index and the byte counter.
local function unqueue(id, lane, size)
  if redis.call('ZREM', K.lane_queue(lane), id) == 1 then
    redis.call('ZREM', K.lane_arrivals(lane), id)
    redis.call('DECRBY', K.lane_bytes(lane), size)
  end
end

-- Per-tenant listing indexes (keys.tenant_status, keys.tenant_feature): sorted sets with all scores 0,
-- so ids (time-sortable) list newest first by lex order. Every step that changes a job's state moves
-- its id from the old state's index to the new one's, in the same step.
local function restate(id, tenant, from, to)
  if not tenant or from == to then return end
  if from then redis.call('ZREM', K.tenant_status(tenant, from), id) end
  redis.call('ZADD', K.tenant_status(tenant, to), 0, id)
end

-- The same index moves for a chunk of jobs, written once per index at the step's end: move(id,
-- tenant, from, to) is restate's, flush() sends one ZREM and one ZADD per index touched rather than
-- two commands per job. The last move of an id in an index wins, as if each had been sent at once;
-- nothing in the step may read these indexes between a move and the flush.
local function new_restates()
  local ops, order, index_keys = {}, {}, {}
  local r = {}

  -- keys.tenant_status, built once per tenant and state of the step.
  local function index(tenant, state)
    local by_state = index_keys[tenant]
    if not by_state then
      by_state = {}
      index_keys[tenant] = by_state
    end
    local key = by_state[state]
    if not key then
      key = K.tenant_status(tenant, state)
      by_state[state] = key
    end
    return key
  end

  local function put(key, id, op)
    local o = ops[key]
    if not o then
      o = {}
      ops[key] = o
      order[#order + 1] = key
    end
    o[id] = op
  end

  function r.move(id, tenant, from, to)
    if not tenant or from == to then return end
    if from then put(index(tenant, from), id, false) end
    put(index(tenant, to), id, true)
  end

  -- ``cmd`` on ``key`` with ``args``, in slices that stay under Lua's unpack limit (even-sized, so
  -- ZADD's score/member pairs stay whole).
  local function send(cmd, key, args)
    for i = 1, #args, 1000 do
      redis.call(cmd, key, unpack(args, i, math.min(i + 999, #args)))
    end
  end

  function r.flush()
    for _, key in ipairs(order) do
      local rem, add = {}, {}
      for id, op in pairs(ops[key]) do
        if op then
          add[#add + 1] = 0
          add[#add + 1] = id
        else
          rem[#rem + 1] = id
        end
      end
      if #rem > 0 then send('ZREM', key, rem) end
      if #add > 0 then send('ZADD', key, add) end
    end
  end

  return r
end

-- A job that ended keeps its record (``jk``: status, usage, cost) for ``ttl_s`` seconds, without
-- the request body: nothing resubmits an ended job, and the body is most of the record's memory.
local function retain(jk, ttl_s)
  redis.call('HDEL', jk, 'body')
  if ttl_s and tonumber(ttl_s) and tonumber(ttl_s) > 0 then redis.call('EXPIRE', jk, ttl_s) end
end

-- A job goes back to its lane: make sure the lane is registered and active again (the tick may
-- have pruned it while the job was in sync). NX: a lane still active keeps its last enqueue time;
-- it cannot be pruned while it holds this job anyway. Meta comes from the job's own record.
local function revive_lane(lane, jk, now_ms)
  if redis.call('ZADD', K.LANES_ACTIVE, 'NX', now_ms, lane) == 1 then
    redis.call('SADD', K.LANES, lane)
    local meta = redis.call('HMGET', jk, 'provider', 'model', 'endpoint')
    local mk = K.lane_meta(lane)
    redis.call('HSETNX', mk, 'provider', meta[1])
    redis.call('HSETNX', mk, 'model', meta[2])
    redis.call('HSETNX', mk, 'endpoint', meta[3])
  end
end

-- Wake the scheduler early (keys.WAKEUP): one entry per step, the list trimmed to a few.
local function wake_scheduler()
  redis.call('LPUSH', K.WAKEUP, '1')
  redis.call('LTRIM', K.WAKEUP, 0, K.WAKEUP_MAX - 1)
end
