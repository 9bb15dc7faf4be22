-- The single-job enqueue.lua that the chunked one replaced (as of the change to chunks), kept as the
-- reference test_enqueue_reference.py holds the chunked script to: same outcomes, same Redis state.
-- Enqueue one job atomically: idempotency check, lane cap, budget reservation, record, queue.
-- KEYS: 1 job, 2 queue (lane or sync), 3 lane arrivals, 4 lane bytes, 5 lane meta, 6 lanes set,
--       7 idempotency key ('' for none), 8 tenant index, 9 wakeup list, 10 tenant's state index,
--       11 tenant's feature index ('' for none), 12 tenant's feature names set, 13 tenants with indexes,
--       14 tenant lanes, 15 active lanes, 16 budget spend, 17 budget committed,
--       18 dedup group ('' when the job takes no part in deduplication)
-- ARGV: 1 job id, 2 request hash, 3 idempotency ttl s, 4 deadline ms, 5 created ms, 6 size,
--       7 lane, 8 provider, 9 model, 10 endpoint, 11 state (queued|sync),
--       12 max lanes per tenant ('' for none), 13 lane idle ms, 14 envelope usd ('' for none), 15 reservation usd,
--       16 dedup window ms, 17 most followers per dedup group, 18.. field/value pairs
-- Returns {'created'|'existing'|'conflict'|'lanes'|'budget', job id or detail}; a created job that
-- attached to an identical live job (a follower, lib/dedup.lua) gets that leader's id third.
-- uses: budget, dedup
local idem = KEYS[7]
if idem ~= '' then
  local prior = redis.call('GET', idem)
  if prior then
    local sep = string.find(prior, '|', 1, true)
    local prior_id = string.sub(prior, 1, sep - 1)
    if string.sub(prior, sep + 1) == ARGV[2] then
      return {'existing', prior_id}
    end
    return {'conflict', prior_id}
  end
end
local id, lane, now = ARGV[1], ARGV[7], tonumber(ARGV[5])
local idle_ms = tonumber(ARGV[13])
-- The tenant's lanes used within the idle window; one more than the cap is refused. Read-only
-- until the record is written: a script's first write decides whether Redis refuses it for OOM,
-- and HSET (unlike a removal) is one it refuses.
local cutoff = now - idle_ms
if ARGV[12] ~= '' then
  local seen = redis.call('ZSCORE', KEYS[14], lane)
  local used = redis.call('ZCOUNT', KEYS[14], '(' .. cutoff, '+inf')
  if not (seen and tonumber(seen) > cutoff) and used >= tonumber(ARGV[12]) then
    return {'lanes', tostring(used)}
  end
end
-- A `reject` envelope counts billed spend and every admitted job's expected cost not yet settled.
local reserve = tonumber(ARGV[15])
if ARGV[14] ~= '' then
  local held = budget_refusal(KEYS[16], KEYS[17], tonumber(ARGV[14]), reserve)
  if held then return {'budget', tostring(held)} end
end
local fields = {}
for i = 18, #ARGV do fields[#fields + 1] = ARGV[i] end
-- The group's live leader, due no later than this job: then this job follows it and enters no queue.
local leader = nil
if KEYS[18] ~= '' then leader = dedup_leader(KEYS[18], tonumber(ARGV[4]), tonumber(ARGV[17])) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZREMRANGEBYSCORE', KEYS[14], '-inf', cutoff)
if reserve > 0 then reserve_budget(KEYS[1], KEYS[17], ARGV[15]) end
local state_index = KEYS[10]
if leader then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'route', '', 'dedup_of', leader)
  redis.call('SADD', K.dedup_followers(leader), id)
  state_index = K.tenant_status(redis.call('HGET', KEYS[1], 'tenant'), 'queued')
elseif ARGV[11] == 'sync' then
  redis.call('ZADD', KEYS[2], ARGV[4], id)
else
  redis.call('ZADD', KEYS[2], ARGV[4], id)
  redis.call('ZADD', KEYS[3], ARGV[5], id)
  redis.call('INCRBY', KEYS[4], ARGV[6])
end
redis.call('HSETNX', KEYS[5], 'provider', ARGV[8])
redis.call('HSETNX', KEYS[5], 'model', ARGV[9])
redis.call('HSETNX', KEYS[5], 'endpoint', ARGV[10])
redis.call('SADD', KEYS[6], lane)
redis.call('ZADD', KEYS[15], now, lane)
redis.call('ZADD', KEYS[14], now, lane)
redis.call('PEXPIRE', KEYS[14], idle_ms)
if idem ~= '' then
  redis.call('SET', idem, id .. '|' .. ARGV[2], 'EX', ARGV[3])
end
if KEYS[18] ~= '' and not leader then
  redis.call('SET', KEYS[18], id, 'PX', ARGV[16])  -- it leads identical requests within the window
end
redis.call('ZADD', KEYS[8], 0, id)
redis.call('ZADD', state_index, 0, id)
redis.call('SADD', KEYS[13], redis.call('HGET', KEYS[1], 'tenant'))
if KEYS[11] ~= '' then
  redis.call('ZADD', KEYS[11], 0, id)
  redis.call('SADD', KEYS[12], KEYS[11])
end
redis.call('LPUSH', KEYS[9], '1')
redis.call('LTRIM', KEYS[9], 0, K.WAKEUP_MAX - 1)
if leader then return {'created', id, leader} end
return {'created', id}
