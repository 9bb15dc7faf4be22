-- Finish a chunk of jobs: only a job still in an expected state (and, for batch results, still in
-- that batch) moves; anything else changes nothing, and a billed result for it counts as duplicate
-- spend. Cost, budget and SLO aggregates move in the same step, so they always equal the jobs' sums.
-- ARGV: 1 JSON array of items, 2 now ms, 3 result ttl ms, 4 day (YYYY-MM-DD), 5 month (YYYY-MM),
--       6 SLO bucket width s, 7 aggregate ttl s
-- item: {id, from=[states], batch=?, state, route, result=?, usage=?, error=?, cost=?,
--        input_tokens, output_tokens, actual_usd, sync_usd, billed, wasted_usd}
-- Returns one code per item: 'ok' | 'skip:<state>' | 'missing'.
local items = cjson.decode(ARGV[1])
local now = tonumber(ARGV[2])
local ttl = ARGV[3]
local day, month = ARGV[4], ARGV[5]
local width = tonumber(ARGV[6])
local agg_ttl = ARGV[7]
local bucket = tostring(math.floor(now / 1000 / width) * width)

local function opt(v) if v == nil or v == cjson.null then return nil end return v end
local function num(v) v = opt(v) if v == nil then return 0 end return tonumber(v) end

local function agg_keys(tenant, feature, lane, model, route)
  local base = PREFIX .. ':agg:' .. day
  local t = base .. ':t:' .. tenant
  redis.call('SADD', base .. ':tenants', tenant)
  redis.call('EXPIRE', base .. ':tenants', agg_ttl)
  local keys = {t .. ':all'}
  local dims = {{'feature', feature}, {'lane', lane}, {'model', model}, {'route', route}}
  for _, d in ipairs(dims) do
    redis.call('SADD', t .. ':' .. d[1], d[2])
    redis.call('EXPIRE', t .. ':' .. d[1], agg_ttl)
    keys[#keys + 1] = t .. ':' .. d[1] .. ':' .. d[2]
  end
  return keys
end

local function add(keys, field, amount)
  if amount == 0 then return end
  for _, k in ipairs(keys) do
    if math.floor(amount) == amount then
      redis.call('HINCRBY', k, field, amount)
    else
      redis.call('HINCRBYFLOAT', k, field, amount)
    end
    redis.call('EXPIRE', k, agg_ttl)
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
  redis.call('HINCRBY', mk, name .. ':' .. le, 1)
  redis.call('HINCRBY', mk, name .. ':count', 1)
  redis.call('HINCRBYFLOAT', mk, name .. ':sum', seconds)
end

local function count_usd(mk, field, amount)
  if amount ~= 0 then redis.call('HINCRBYFLOAT', mk, field, amount) end
end

local function spend(tenant, amount)
  if amount > 0 then
    local k = PREFIX .. ':budget:' .. tenant .. ':' .. month
    redis.call('INCRBYFLOAT', k, amount)
    redis.call('EXPIRE', k, 40 * 86400)
  end
end

local out = {}
for i, it in ipairs(items) do
  local jk = k_job(it.id)
  local rec = redis.call('HMGET', jk, 'state', 'batch_id', 'tenant', 'feature', 'lane', 'model',
    'deadline_ms', 'size', 'created_ms')
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
      redis.call('HSET', jk, 'state', it.state, 'route', route, 'completed_ms', now)
      if opt(it.usage) then redis.call('HSET', jk, 'usage', it.usage) end
      if opt(it.cost) then redis.call('HSET', jk, 'cost', it.cost) end
      if opt(it.error) then redis.call('HSET', jk, 'error', it.error) end
      if opt(it.result) then redis.call('SET', k_result(it.id), it.result, 'PX', ttl) end
      local keys = agg_keys(rec[3], feature, rec[5], rec[6], route)
      local actual, sync_usd = num(it.actual_usd), num(it.sync_usd)
      add(keys, 'jobs', 1)
      add(keys, 'input_tokens', num(it.input_tokens))
      add(keys, 'output_tokens', num(it.output_tokens))
      add(keys, 'actual_usd', actual)
      add(keys, 'sync_equivalent_usd', sync_usd)
      add(keys, 'saved_usd', sync_usd - actual)
      add(keys, 'wasted_usd', num(it.wasted_usd))
      if route == 'sync' then add(keys, 'sync_jobs', 1) end
      if route == 'flex' then add(keys, 'flex_jobs', 1) end
      local on_time = now <= tonumber(rec[7])
      if on_time then add(keys, 'on_time', 1) else add(keys, 'late', 1) end
      spend(rec[3], actual + num(it.wasted_usd))
      local mk = k_metrics(rec[5])
      redis.call('HINCRBY', mk, 'jobs:' .. it.state .. ':' .. route, 1)
      redis.call('HINCRBY', mk, on_time and 'on_time' or 'late', 1)
      count_usd(mk, 'actual_usd', actual)
      count_usd(mk, 'sync_equivalent_usd', sync_usd)
      count_usd(mk, 'saved_usd', sync_usd - actual)
      count_usd(mk, 'wasted_usd', num(it.wasted_usd))
      observe(mk, 'e2e', math.max(0, now - (tonumber(rec[9]) or now)) / 1000)
      local sk = PREFIX .. ':slo:{' .. rec[5] .. '}:buckets'
      redis.call('HINCRBY', sk, bucket .. ':all', 1)
      redis.call('HINCRBY', sk, bucket .. (on_time and ':good' or ':bad'), 1)
      if route ~= 'batch' then redis.call('HINCRBY', sk, bucket .. ':sync', 1) end
      enqueue_webhook(it.id, it.state == 'succeeded' and 'job.succeeded' or 'job.failed', now)
      out[i] = 'ok'
    else
      if it.billed then
        local keys = agg_keys(rec[3], feature, rec[5], rec[6], it.route)
        add(keys, 'duplicate_usd', num(it.actual_usd))
        spend(rec[3], num(it.actual_usd))
        count_usd(k_metrics(rec[5]), 'duplicate_usd', num(it.actual_usd))
      end
      out[i] = 'skip:' .. state
    end
  end
end
return out
