-- Enqueue a chunk of jobs in one call, each judged on its own exactly as a single enqueue of it in
-- request order would be: idempotency (existing, conflict), the tenant's lane cap, the budget envelope
-- and its reservation, deduplication (leader or follower), sync or queued. What later jobs of the
-- chunk read (idempotency keys, the tenant's lanes, the budget, dedup groups and followers, job
-- records) is written in each job's own turn; what nothing in the chunk reads (lane queues and
-- arrivals, byte counters, listing indexes, lane registration, the wake-up) is gathered and written
-- once per key after the last job, so a chunk of one lane pays those commands once, not per job.
-- ARGV: 1 idempotency ttl s, 2 max lanes per tenant ('' for none), 3 lane idle ms,
--       4 the jobs: a JSON array, per job an array of strings:
--         1 id, 2 tenant, 3 provider, 4 endpoint, 5 model, 6 state (queued|sync), 7 deadline ms,
--         8 created ms, 9 callback url, 10 tags (JSON), 11 feature, 12 idempotency key, 13 prefix,
--         14 request hash, 15 envelope usd ('' for none), 16 reservation usd, 17 budget month,
--         then optional: 18 dedup digest, 19 dedup cost, 20 dedup window ms, 21 most followers per
--         group, 22 client batch, 23 custom id, 24 traceparent, 25 tracestate
--       5.. the jobs' bodies, in the same order.
-- Returns one entry per job: 1 for a job created (not a follower), else {status, job id or detail}
-- as enqueue reports it ('existing'|'conflict'|'lanes'|'budget'), or {'created', id, leader id} for a
-- job that attached to an identical live job (a follower, lib/dedup.lua).
-- Every job's reads come before its first write, and a refused job writes nothing: a script's first
-- write decides whether Redis refuses it for OOM (HSET is one it refuses), and then nothing is written.
-- Those reads include the type of every key the job will write (once per key per call): a key of the
-- wrong type fails the job before its first write, so a failed job leaves nothing behind, and the
-- gathered writes cannot fail for the jobs that were created. (Redis judges maxmemory as a call
-- begins: one begun over it refuses every job that would write, OOM, each cleanly; one begun under it
-- stores all its jobs, so memory may overshoot by one chunk, as a MULTI of them would.) The lane
-- registration, the tenant and feature name sets and the wake-up list are read first and written only
-- where something is missing: the end state is the one a write per job leaves.
-- uses: budget, dedup
local idem_ttl, cap, idle_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local jobs = cjson.decode(ARGV[4])
local out = {}

-- Gathered writes, each applied once at the end, and for each the jobs it serves: sorted set key ->
-- {score, member, ...} in job order; lane -> bytes queued, its missing meta and last enqueue time; set
-- key -> members. Their keys' types were checked before those jobs wrote anything, so they cannot
-- fail; should one fail all the same, the jobs it serves are reported failed (see guarded).
local zadds, zorder = {}, {}
local lanes, lane_order = {}, {}
local sadds, sorder = {}, {}
local tenant_lane_keys, tl_order = {}, {}
local created = {}
local current  -- the job being enqueued (its index)

local function served(entry)
  local jobs_of = entry.jobs
  if jobs_of[#jobs_of] ~= current then jobs_of[#jobs_of + 1] = current end
end

local function zadd(key, score, member)
  local entry = zadds[key]
  if not entry then
    entry = {list = {}, jobs = {}}
    zadds[key] = entry
    zorder[#zorder + 1] = key
  end
  local list = entry.list
  list[#list + 1] = score
  list[#list + 1] = member
  served(entry)
end

local function sadd(key, member)
  local entry = sadds[key]
  if not entry then
    entry = {set = {}, jobs = {}}
    sadds[key] = entry
    sorder[#sorder + 1] = key
  end
  entry.set[member] = true
  served(entry)
end

-- Keys whose type this call has checked (then only its own writes touch them, with the right type).
local checked = {}

-- Raise WRONGTYPE unless ``key`` is missing or of ``kind``; with ``counter`` ('integer' or 'float'),
-- a string key must also hold a number INCRBY / INCRBYFLOAT accepts.
local function expect(key, kind, counter)
  if checked[key] then return end
  if counter then  -- GET raises WRONGTYPE itself (one call, not two)
    local value = redis.call('GET', key)
    if value and counter == 'integer' and not string.match(value, '^-?%d+$') then
      error({err = 'ERR value is not an integer or out of range'})
    elseif value and not tonumber(value) then
      error({err = 'ERR value is not a valid float'})
    end
  else
    local found = redis.call('TYPE', key)['ok']
    if found ~= 'none' and found ~= kind then
      error({err = 'WRONGTYPE Operation against a key holding the wrong kind of value'})
    end
  end
  checked[key] = true
end

-- What this call read of a lane, before its first job's first write (HMGET and SISMEMBER raise
-- WRONGTYPE themselves, so they check the meta hash and the lanes set too): the meta fields missing
-- and whether it is registered, so the end writes only what is missing. Its gathered writes go out
-- once a job of it was created.
local function lane_entry(lane, provider, model, endpoint)
  local entry = lanes[lane]
  if entry then return entry end
  local meta = redis.call('HMGET', K.lane_meta(lane), 'provider', 'model', 'endpoint')
  entry = {missing = {}, jobs = {}, registered = redis.call('SISMEMBER', K.LANES, lane) == 1,
           queue = K.lane_queue(lane), arrivals = K.lane_arrivals(lane)}
  local values = {provider, model, endpoint}
  for i, name in ipairs({'provider', 'model', 'endpoint'}) do
    if not meta[i] then entry.missing[#entry.missing + 1] = {name, values[i]} end
  end
  lanes[lane] = entry
  lane_order[#lane_order + 1] = lane
  return entry
end

-- Whether ``member`` is in set ``key`` (read once per call, which checks the key's type): then the
-- end need not add it.
local members_known = {}

local function is_member(key, member)
  local known = members_known[key]
  if not known then
    known = {}
    members_known[key] = known
  end
  if known[member] == nil then known[member] = redis.call('SISMEMBER', key, member) == 1 end
  return known[member]
end

-- A tenant's keys, built once per call, and its listing indexes checked (by type) once per call.
local tenants = {}

local function tenant_entry(tenant)
  local t = tenants[tenant]
  if not t then
    t = {lanes = K.tenant_lanes(tenant), jobs = K.tenant_jobs(tenant), status = {}, features = {}}
    tenants[tenant] = t
  end
  return t
end

-- The tenant's listing keys a job of state ``listed`` and feature ``feature`` ('' for none) is
-- written to, checked: its status index, and its feature index with whether the tenant's feature
-- names already hold it.
local function tenant_indexes(t, tenant, listed, feature)
  if t.indexed == nil then
    expect(t.jobs, 'zset')
    t.indexed = is_member(K.TENANTS_INDEXED, tenant)
  end
  local sk = t.status[listed]
  if not sk then
    sk = K.tenant_status(tenant, listed)
    expect(sk, 'zset')
    t.status[listed] = sk
  end
  if feature == '' then return sk, nil end
  local f = t.features[feature]
  if not f then
    local fk = K.tenant_feature(tenant, feature)
    expect(fk, 'zset')
    f = {key = fk, named = is_member(K.tenant_features(tenant), fk)}
    t.features[feature] = f
  end
  return sk, f
end

-- The tenant's lanes (keys.tenant_lanes) are read by later jobs' cap checks, so they change in each
-- job's turn; a prune with the cutoff already applied, and an entry already at this score, are
-- skipped (nothing added since could fall under that cutoff when it is below every score added).
local pruned, lowest, lane_at = {}, {}, {}

local function use_lane(tlk, lane, now, cutoff)
  if pruned[tlk] ~= cutoff or lowest[tlk] <= cutoff then
    redis.call('ZREMRANGEBYSCORE', tlk, '-inf', cutoff)
    pruned[tlk], lowest[tlk] = cutoff, math.huge
    lane_at[tlk] = {}
  end
  local at = lane_at[tlk]
  if at[lane] ~= now then
    redis.call('ZADD', tlk, now, lane)
    at[lane] = now
    if now < lowest[tlk] then lowest[tlk] = now end
  end
  local jobs_of = tenant_lane_keys[tlk]
  if not jobs_of then
    jobs_of = {}
    tenant_lane_keys[tlk] = jobs_of
    tl_order[#tl_order + 1] = tlk
  end
  jobs_of[#jobs_of + 1] = current
end

local function enqueue(j, body)
  local id, tenant = j[1], j[2]
  local idem = ''
  if j[12] ~= '' then
    idem = K.idempotency(tenant, j[12])
    local prior = redis.call('GET', idem)
    if prior then
      local sep = string.find(prior, '|', 1, true)
      local prior_id = string.sub(prior, 1, sep - 1)
      if string.sub(prior, sep + 1) == j[14] then return {'existing', prior_id} end
      return {'conflict', prior_id}
    end
  end
  local provider, endpoint, model, state = j[3], j[4], j[5], j[6]
  local lane = provider .. ':' .. model .. ':' .. endpoint
  local now = tonumber(j[8])
  local cutoff = now - idle_ms
  local t = tenant_entry(tenant)
  local tlk = t.lanes
  -- The tenant's lanes used within the idle window; one more than the cap is refused.
  if cap ~= '' then
    local seen = redis.call('ZSCORE', tlk, lane)
    local used = redis.call('ZCOUNT', tlk, '(' .. cutoff, '+inf')
    if not (seen and tonumber(seen) > cutoff) and used >= tonumber(cap) then
      return {'lanes', tostring(used)}
    end
  end
  -- A `reject` envelope counts billed spend and every admitted job's expected cost not yet settled.
  local reserve = j[16]
  local reserving = tonumber(reserve) > 0
  local committed = nil
  if j[15] ~= '' or reserving then committed = K.budget_committed(tenant, j[17]) end
  if j[15] ~= '' then
    local held = budget_refusal(K.budget_spend(tenant, j[17]), committed, tonumber(j[15]), tonumber(reserve))
    if held then return {'budget', tostring(held)} end
  end
  local digest = j[18] or ''
  local gk = digest ~= '' and K.dedup_group(tenant, digest) or nil
  -- The group's live leader, due no later than this job: then this job follows it and enters no queue.
  local leader = nil
  if gk then leader = dedup_leader(gk, tonumber(j[7]), tonumber(j[21])) end
  local jk = K.job(id)
  local listed = leader and 'queued' or state
  -- Every key written below, then the gathered ones, holds the type its write needs.
  if cap == '' then expect(tlk, 'zset') end  -- else its reads above met any wrong type
  if reserving then expect(committed, 'string', 'float') end
  if leader then expect(K.dedup_followers(leader), 'set') end
  local entry = lane_entry(lane, provider, model, endpoint)
  if leader then  -- a follower enters no queue
  elseif state == 'sync' then
    expect(K.SYNC_QUEUE, 'zset')
  elseif not entry.queue_checked then
    expect(entry.queue, 'zset')
    expect(entry.arrivals, 'zset')
    expect(K.lane_bytes(lane), 'string', 'integer')
    entry.queue_checked = true
  end
  expect(K.LANES_ACTIVE, 'zset')
  local sk, feature = tenant_indexes(t, tenant, listed, j[11])
  local route = state == 'sync' and 'sync' or ''
  local fields = {
    'id', id, 'tenant', tenant, 'provider', provider, 'endpoint', endpoint, 'model', model,
    'lane', lane, 'state', state, 'route', route, 'deadline_ms', j[7], 'created_ms', j[8],
    'body', body, 'size', #body, 'callback_url', j[9], 'tags', j[10], 'feature', j[11],
    'idempotency_key', j[12], 'attempts', 0, 'batch_id', '', 'prefix', j[13],
  }
  if digest ~= '' then
    fields[#fields + 1] = 'dedup_digest'; fields[#fields + 1] = digest
    fields[#fields + 1] = 'dedup_cost'; fields[#fields + 1] = j[19]
  end
  if (j[22] or '') ~= '' then
    fields[#fields + 1] = 'client_batch'; fields[#fields + 1] = j[22]
    fields[#fields + 1] = 'custom_id'; fields[#fields + 1] = j[23]
  end
  if (j[24] or '') ~= '' then
    fields[#fields + 1] = 'traceparent'; fields[#fields + 1] = j[24]
    if (j[25] or '') ~= '' then fields[#fields + 1] = 'tracestate'; fields[#fields + 1] = j[25] end
  end
  redis.call('HSET', jk, unpack(fields))
  use_lane(tlk, lane, now, cutoff)
  if reserving then reserve_budget(jk, committed, reserve) end
  if leader then
    redis.call('HSET', jk, 'state', 'queued', 'route', '', 'dedup_of', leader)
    redis.call('SADD', K.dedup_followers(leader), id)
  elseif state == 'sync' then
    zadd(K.SYNC_QUEUE, j[7], id)
  else
    zadd(entry.queue, j[7], id)
    zadd(entry.arrivals, j[8], id)
  end
  if not leader and state ~= 'sync' then entry.bytes = (entry.bytes or 0) + #body end
  entry.active = now  -- the last enqueue's time, as sequential enqueues would leave it
  served(entry)
  if idem ~= '' then redis.call('SET', idem, id .. '|' .. j[14], 'EX', idem_ttl) end
  if gk and not leader then
    redis.call('SET', gk, id, 'PX', j[20])  -- it leads identical requests within the window
  end
  zadd(t.jobs, 0, id)
  zadd(sk, 0, id)
  if not t.indexed then sadd(K.TENANTS_INDEXED, tenant) end
  if feature then
    zadd(feature.key, 0, id)
    if not feature.named then sadd(K.tenant_features(tenant), feature.key) end
  end
  created[#created + 1] = current
  if leader then return {'created', id, leader} end
  return 1
end

-- Up to this many members per gathered command (Lua's unpack has a stack limit).
local SPAN = 2000

-- Run a gathered write; should it fail (its key was checked, so it should not), each job it serves
-- is reported with its error, the others stand.
local function guarded(jobs_of, ...)
  local ok, err = pcall(redis.call, ...)
  if not ok then
    if type(err) == 'table' then err = err.err or cjson.encode(err) end
    for _, i in ipairs(jobs_of) do out[i] = {'error', tostring(err)} end
  end
end

local function flush()
  for _, key in ipairs(zorder) do
    local entry = zadds[key]
    local list = entry.list
    for i = 1, #list, SPAN do
      guarded(entry.jobs, 'ZADD', key, unpack(list, i, math.min(i + SPAN - 1, #list)))
    end
  end
  for _, lane in ipairs(lane_order) do
    local entry = lanes[lane]
    if #entry.jobs > 0 then  -- else no job of it was created (read before a refusal or an error)
      if entry.bytes then guarded(entry.jobs, 'INCRBY', K.lane_bytes(lane), entry.bytes) end
      for _, field in ipairs(entry.missing) do
        guarded(entry.jobs, 'HSETNX', K.lane_meta(lane), field[1], field[2])
      end
      if not entry.registered then guarded(entry.jobs, 'SADD', K.LANES, lane) end
      guarded(entry.jobs, 'ZADD', K.LANES_ACTIVE, entry.active, lane)
    end
  end
  for _, key in ipairs(sorder) do
    local entry = sadds[key]
    local members = {}
    for member in pairs(entry.set) do members[#members + 1] = member end
    guarded(entry.jobs, 'SADD', key, unpack(members))
  end
  for _, tlk in ipairs(tl_order) do guarded(tenant_lane_keys[tlk], 'PEXPIRE', tlk, idle_ms) end
  -- A hint (the scheduler also ticks on its own): a wake-up list of the wrong type fails no job.
  -- Its entries are all '1', so a push per job trimmed to WAKEUP_MAX leaves min(length + jobs,
  -- WAKEUP_MAX) of them: pushed only while the list is short (it mostly is full under load).
  if #created == 0 then return end
  local ok, length = pcall(redis.call, 'LLEN', K.WAKEUP)
  if ok and length ~= K.WAKEUP_MAX then
    local ones = {}
    for i = 1, math.max(math.min(#created, K.WAKEUP_MAX - length), 1) do ones[i] = '1' end
    redis.call('LPUSH', K.WAKEUP, unpack(ones))
    if length + #ones > K.WAKEUP_MAX then redis.call('LTRIM', K.WAKEUP, 0, K.WAKEUP_MAX - 1) end
  end
end

-- Each job runs protected: a command that fails (Redis out of memory at a job's first write, a key of
-- the wrong type) fails that job alone, {'error', message}, as its own script run would, and the jobs
-- after it still run; the gathered writes of every job created go out at the end either way.
for i, j in ipairs(jobs) do
  current = i
  local ok, reply = pcall(enqueue, j, ARGV[4 + i])
  if not ok then
    if type(reply) == 'table' then reply = reply.err or cjson.encode(reply) end
    reply = {'error', tostring(reply)}
  end
  out[i] = reply
end
flush()
return out
