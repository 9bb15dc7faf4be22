-- Deduplication of identical requests (scheduler/ledger/dedup.py says which are identical). A group's
-- first job, its leader, is the only one sent to the provider; later identical jobs, its followers,
-- wait attached to it (keys.dedup_followers), out of every lane queue, and end with it in the same
-- step. keys.dedup_group names the leader new requests attach to, for the tenant's window.
-- A follower is never due before its leader: a request due earlier does not attach (it runs alone
-- and leads the group from then on), so the leader's own deadline protection covers its followers.
-- uses: state, json

local DEDUP_LIVE = {'queued', 'batched', 'sync'}

-- The live leader a new job due at ``deadline_ms`` attaches to under group key ``gk``, or nil (none,
-- due later than the job, or already followed by ``max_followers``: the job then leads a new group).
local function dedup_leader(gk, deadline_ms, max_followers)
  local leader = redis.call('GET', gk)
  if not leader then return nil end
  local rec = redis.call('HMGET', K.job(leader), 'state', 'deadline_ms', 'dedup_of')
  if not rec[1] or not contains(DEDUP_LIVE, rec[1]) then return nil end
  if rec[3] and rec[3] ~= '' then return nil end  -- a follower never leads
  if tonumber(rec[2]) > deadline_ms then return nil end
  if redis.call('SCARD', K.dedup_followers(leader)) >= max_followers then return nil end
  return leader
end

-- The followers still waiting on ``leader``: queued, attached to it. Sorted by deadline, then id.
local function dedup_waiting(leader)
  local out = {}
  for _, fid in ipairs(redis.call('SMEMBERS', K.dedup_followers(leader))) do
    local rec = redis.call('HMGET', K.job(fid), 'state', 'dedup_of', 'deadline_ms')
    if rec[1] == 'queued' and rec[2] == leader then
      out[#out + 1] = {id = fid, deadline_ms = tonumber(rec[3])}
    end
  end
  table.sort(out, function(a, b)
    if a.deadline_ms ~= b.deadline_ms then return a.deadline_ms < b.deadline_ms end
    return a.id < b.id
  end)
  return out
end

-- The group index forgets ``leader`` (when it still names it): new requests lead a new group.
local function dedup_forget(leader, tenant, digest)
  if not digest or digest == '' then return end
  local gk = K.dedup_group(tenant, digest)
  if redis.call('GET', gk) == leader then redis.call('DEL', gk) end
end

-- ``leader`` leaves its group without a result (cancelled): the earliest-due waiting follower takes
-- its place in its lane queue and the rest attach to it; the index names it while its window lasts.
-- Returns the promoted job's id, or nil when nobody was waiting.
local function dedup_promote(leader, tenant, digest, now_ms)
  local waiting = dedup_waiting(leader)
  redis.call('DEL', K.dedup_followers(leader))
  if #waiting == 0 then
    dedup_forget(leader, tenant, digest)
    return nil
  end
  local heir = waiting[1].id
  local jk = K.job(heir)
  local rec = redis.call('HMGET', jk, 'lane', 'deadline_ms', 'created_ms', 'size')
  redis.call('HDEL', jk, 'dedup_of')
  redis.call('ZADD', K.lane_queue(rec[1]), rec[2], heir)
  redis.call('ZADD', K.lane_arrivals(rec[1]), rec[3], heir)
  redis.call('INCRBY', K.lane_bytes(rec[1]), rec[4])
  revive_lane(rec[1], jk, now_ms)
  for i = 2, #waiting do
    redis.call('HSET', K.job(waiting[i].id), 'dedup_of', heir)
    redis.call('SADD', K.dedup_followers(heir), waiting[i].id)
  end
  if digest and digest ~= '' then
    local gk = K.dedup_group(tenant, digest)
    if redis.call('GET', gk) == leader then redis.call('SET', gk, heir, 'KEEPTTL') end
  end
  wake_scheduler()
  return heir
end

-- A job's cost record (raw JSON ``blob``, or nil when unpriced) when it pays ``usd`` of a call of ``call_usd``.
local function dedup_cost_record(blob, usd, call_usd)
  if not blob then return nil end
  local c = cjson.decode(blob)
  c.actual_usd = usd
  if type(c.sync_equivalent_usd) == 'number' then c.saved_usd = c.sync_equivalent_usd - usd end
  c.deduplicated_saved_usd = call_usd - usd
  return cjson.encode(c)
end

-- How a group of ``size`` jobs ends from its leader's finish item ``it``: the leader's and each
-- follower's item and cost record. ``rule`` is the tenant's dedup cost: ``split`` (everyone pays an
-- even share of the call) or ``first`` (the leader pays it all). A job's deduplicated saving is the
-- call's cost less its own share, so the group's savings sum to what the followers' own calls would
-- have cost. Tokens the provider processed count once, on the leader; wasted spend stays its own.
local function dedup_group_costs(it, blob, size, rule)
  local call_usd = num(it.actual_usd)
  local leader_usd, follower_usd = call_usd, 0
  if rule ~= 'first' then
    leader_usd = call_usd / size
    follower_usd = leader_usd
  end
  local leader, follower = {}, {}
  for k, v in pairs(it) do leader[k] = v; follower[k] = v end
  leader.actual_usd, leader.dedup_saved_usd = leader_usd, call_usd - leader_usd
  follower.actual_usd, follower.dedup_saved_usd, follower.deduplicated = follower_usd, call_usd - follower_usd, true
  follower.input_tokens, follower.output_tokens, follower.cached_tokens, follower.wasted_usd = 0, 0, 0, 0
  return {
    leader = leader, follower = follower,
    leader_cost = dedup_cost_record(blob, leader_usd, call_usd),
    follower_cost = dedup_cost_record(blob, follower_usd, call_usd),
  }
end
