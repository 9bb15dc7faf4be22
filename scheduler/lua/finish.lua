-- Finish a chunk of jobs: only a job still in an expected state (and, for batch results, still in
-- that batch) moves; anything else changes nothing, and a billed result for it counts as duplicate
-- spend. Cost, budget, metric and SLO aggregates move in the same step, so they always equal the
-- jobs' sums. Increments are summed per key over the chunk and written once at the end: a chunk of
-- 500 jobs of one lane touches a few dozen aggregate fields, not tens of thousands.
-- ARGV: 1 JSON array of items, 2 now ms, 3 result ttl ms, 4 day (YYYY-MM-DD), 5 month (YYYY-MM),
--       6 SLO bucket width s, 7 aggregate ttl s, 8 seconds an ended job record is kept (retention),
--       9.. blobs: result bodies, usage, cost (raw JSON)
-- item: {id, from=[states], batch=?, r=?, u=?, c=? (ARGV indexes of its result, usage, cost),
--        state, route, error=?,
--        input_tokens, output_tokens, actual_usd, sync_usd, billed, wasted_usd}
-- Returns one code per item: 'ok' | 'skip:<state>' | 'missing'.
local items = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
local ttl = ARGV[3]
local day, month = ARGV[4], ARGV[5]
local width = tonumber(ARGV[6])
local agg_ttl = tonumber(ARGV[7])
local job_ttl = ARGV[8]
local bucket = tostring(math.floor(now / 1000 / width) * width)
local BUDGET_TTL = 40 * 86400

local function opt(v) if v == nil or v == cjson.null then return nil end return v end
local function num(v) v = opt(v) if v == nil then return 0 end return tonumber(v) end

-- Sums per key and field, set members per key, and each key's TTL (0: none), written by flush().
local sums, sum_keys, members, member_keys, ttl_of = {}, {}, {}, {}, {}
local spends, spend_keys = {}, {}  -- budget spend per key (plain INCRBYFLOAT strings)

local function bump(key, field, amount, key_ttl)
  if amount == 0 then return end
  local fields = sums[key]
  if not fields then
    fields = {}
    sums[key] = fields
    sum_keys[#sum_keys + 1] = key
    ttl_of[key] = key_ttl
  end
  fields[field] = (fields[field] or 0) + amount
end

local function member(key, value)
  local set = members[key]
  if not set then
    set = {}
    members[key] = set
    member_keys[#member_keys + 1] = key
  end
  set[value] = true
end

local function flush()
  for _, key in ipairs(member_keys) do
    local list = {}
    for value in pairs(members[key]) do list[#list + 1] = value end
    redis.call('SADD', key, unpack(list))
    redis.call('EXPIRE', key, agg_ttl)
  end
  for _, key in ipairs(sum_keys) do
    for field, amount in pairs(sums[key]) do
      -- By name, not by value: a dollar sum that happens to be whole must still add as a float,
      -- or HINCRBY fails on the field's earlier fractional value.
      if string.sub(field, -4) == '_usd' or string.sub(field, -4) == ':sum' then
        redis.call('HINCRBYFLOAT', key, field, amount)
      else
        redis.call('HINCRBY', key, field, amount)
      end
    end
    if ttl_of[key] > 0 then redis.call('EXPIRE', key, ttl_of[key]) end
  end
  for _, key in ipairs(spend_keys) do
    redis.call('INCRBYFLOAT', key, spends[key])
    redis.call('EXPIRE', key, BUDGET_TTL)
  end
end

-- The aggregate hashes one job counts in: the tenant's day total and one per dimension value.
local function agg_keys(tenant, feature, lane, model, route)
  local base = PREFIX .. ':agg:' .. day
  local t = base .. ':t:' .. tenant
  member(base .. ':tenants', tenant)
  local keys = {t .. ':all'}
  local dims = {{'feature', feature}, {'lane', lane}, {'model', model}, {'route', route}}
  for _, d in ipairs(dims) do
    member(t .. ':' .. d[1], d[2])
    keys[#keys + 1] = t .. ':' .. d[1] .. ':' .. d[2]
  end
  return keys
end

-- Aggregates add up per (tenant, feature, lane, model, route) group first, and are spread over
-- the group's five hashes once, in flush_groups(): most chunks hold one or two groups.
local groups, group_order = {}, {}

local function group(tenant, feature, lane, model, route)
  local id = tenant .. '\0' .. feature .. '\0' .. lane .. '\0' .. model .. '\0' .. route
  local g = groups[id]
  if not g then
    g = {dims = {tenant, feature, lane, model, route}, sums = {}}
    groups[id] = g
    group_order[#group_order + 1] = id
  end
  return g
end

local function add(g, field, amount)
  if amount ~= 0 then g.sums[field] = (g.sums[field] or 0) + amount end
end

local function flush_groups()
  for _, id in ipairs(group_order) do
    local g = groups[id]
    local keys = agg_keys(unpack(g.dims))
    for field, amount in pairs(g.sums) do
      for _, k in ipairs(keys) do bump(k, field, amount, agg_ttl) end
    end
  end
end

-- Prometheus counters per lane (scheduler/metrics.py reads them; keys.lane_metrics). The bucket
-- bounds (seconds) must equal metrics.LATENCY_BUCKETS_S; a test compares them.
local LATENCY_BUCKETS = {1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 21600, 43200,
  86400, 129600, 172800}
local function k_metrics(lane) return PREFIX .. ':metrics:{' .. lane .. '}' end

local function observe(mk, name, seconds)
  local le = '+Inf'
  for _, bound in ipairs(LATENCY_BUCKETS) do
    if seconds <= bound then le = tostring(bound) break end
  end
  bump(mk, name .. ':' .. le, 1, 0)
  bump(mk, name .. ':count', 1, 0)
  bump(mk, name .. ':sum', seconds, 0)
end

local function spend(tenant, amount)
  if amount > 0 then
    local key = PREFIX .. ':budget:' .. tenant .. ':' .. month
    if not spends[key] then spend_keys[#spend_keys + 1] = key end
    spends[key] = (spends[key] or 0) + amount
  end
end

local out, ended = {}, {}
for i, it in ipairs(items) do
  local jk = k_job(it.id)
  local rec = redis.call('HMGET', jk, 'state', 'batch_id', 'tenant', 'feature', 'lane', 'model',
    'deadline_ms', 'size', 'created_ms', 'callback_url')
  local state = rec[1]
  if not state then
    out[i] = 'missing'
  else
    local batch = opt(it.batch)
    local feature = rec[4] or ''
    if feature == '' then feature = '-' end
    if contains(it.from, state) and (batch == nil or batch == rec[2]) then
      local route = it.route
      if state == 'queued' then unqueue(it.id, rec[5], tonumber(rec[8])) end
      if state == 'sync' then redis.call('ZREM', K_SYNC_QUEUE, it.id) end
      local fields = {'state', it.state, 'route', route, 'completed_ms', now}
      if opt(it.u) then fields[#fields + 1] = 'usage'; fields[#fields + 1] = ARGV[it.u] end
      if opt(it.c) then fields[#fields + 1] = 'cost'; fields[#fields + 1] = ARGV[it.c] end
      if opt(it.error) then fields[#fields + 1] = 'error'; fields[#fields + 1] = it.error end
      redis.call('HSET', jk, unpack(fields))
      release_reservation(jk)
      if opt(it.r) then redis.call('SET', k_result(it.id), ARGV[it.r], 'PX', ttl) end
      restate(it.id, rec[3], state, it.state)
      retain(it.id, job_ttl)
      local keys = group(rec[3], feature, rec[5], rec[6], route)
      local actual, sync_usd, wasted = num(it.actual_usd), num(it.sync_usd), num(it.wasted_usd)
      local on_time = now <= tonumber(rec[7])
      add(keys, 'jobs', 1)
      add(keys, 'input_tokens', num(it.input_tokens))
      add(keys, 'output_tokens', num(it.output_tokens))
      add(keys, 'actual_usd', actual)
      add(keys, 'sync_equivalent_usd', sync_usd)
      add(keys, 'saved_usd', sync_usd - actual)
      add(keys, 'wasted_usd', wasted)
      if route == 'sync' then add(keys, 'sync_jobs', 1) end
      if route == 'flex' then add(keys, 'flex_jobs', 1) end
      add(keys, on_time and 'on_time' or 'late', 1)
      spend(rec[3], actual + wasted)
      local mk = k_metrics(rec[5])
      bump(mk, 'jobs:' .. it.state .. ':' .. route, 1, 0)
      bump(mk, on_time and 'on_time' or 'late', 1, 0)
      bump(mk, 'actual_usd', actual, 0)
      bump(mk, 'sync_equivalent_usd', sync_usd, 0)
      bump(mk, 'saved_usd', sync_usd - actual, 0)
      bump(mk, 'wasted_usd', wasted, 0)
      observe(mk, 'e2e', math.max(0, now - (tonumber(rec[9]) or now)) / 1000)
      local sk = PREFIX .. ':slo:{' .. rec[5] .. '}:buckets'
      bump(sk, bucket .. ':all', 1, 0)
      bump(sk, bucket .. (on_time and ':good' or ':bad'), 1, 0)
      if route ~= 'batch' then bump(sk, bucket .. ':sync', 1, 0) end
      enqueue_webhook(it.id, it.state == 'succeeded' and 'job.succeeded' or 'job.failed', now,
        rec[10], rec[3])
      ended[#ended + 1] = it.id
      out[i] = 'ok'
    else
      if it.billed then
        local keys = group(rec[3], feature, rec[5], rec[6], it.route)
        add(keys, 'duplicate_usd', num(it.actual_usd))
        spend(rec[3], num(it.actual_usd))
        bump(k_metrics(rec[5]), 'duplicate_usd', num(it.actual_usd), 0)
      end
      out[i] = 'skip:' .. state
    end
  end
end
flush_groups()
flush()
announce_ended(ended)
return out
