-- What ended jobs tell about their lane: its Prometheus counters and end-to-end histogram
-- (keys.lane_metrics, read by scheduler/costs/metrics.py at scrape time) and its SLO buckets
-- (keys.slo_buckets, read by the SLO tracker).
-- uses: tally, json

-- The lane figures of one step's jobs, ended at ``now_ms`` and bucketed ``bucket_s`` wide for the SLO.
-- ended(job, item, on_time) counts a job's end; duplicate(lane, usd) a billed result nobody uses;
-- flush() writes.
local function new_lane_metrics(now_ms, bucket_s)
  local tally = new_tally()
  local add = tally.add
  local bucket = tostring(math.floor(now_ms / 1000 / bucket_s) * bucket_s)
  local lane_metrics = {}
  -- Field and key names are built once per step, not per job (string building is most of a
  -- job's cost in Lua): the SLO bucket's fields, each histogram bound's field, each lane's keys.
  local slo_all, slo_good, slo_bad, slo_sync = bucket .. ':all', bucket .. ':good', bucket .. ':bad',
    bucket .. ':sync'
  local e2e_bounds, e2e_fields = {}, {}
  for i, bound in ipairs(LATENCY_BUCKETS_S) do
    e2e_bounds[i] = bound
    e2e_fields[i] = 'e2e:' .. tostring(bound)
  end
  local e2e_inf = 'e2e:+Inf'
  local lane_keys, jobs_fields = {}, {}

  local function keys_of(lane)
    local k = lane_keys[lane]
    if not k then
      k = {K.lane_metrics(lane), K.slo_buckets(lane)}
      lane_keys[lane] = k
    end
    return k[1], k[2]
  end

  local function jobs_field(state, route)
    local by_route = jobs_fields[state]
    if not by_route then
      by_route = {}
      jobs_fields[state] = by_route
    end
    local f = by_route[route]
    if not f then
      f = 'jobs:' .. state .. ':' .. route
      by_route[route] = f
    end
    return f
  end

  -- One observation of the end-to-end histogram kept as per-bucket counts (metrics.py makes them
  -- cumulative); the bounds are keys.LATENCY_BUCKETS_S.
  local function observe(mk, seconds)
    local le = e2e_inf
    for i = 1, #e2e_bounds do
      if seconds <= e2e_bounds[i] then le = e2e_fields[i] break end
    end
    add(mk, le, 1, 0)
    add(mk, 'e2e:count', 1, 0)
    add(mk, 'e2e:sum', seconds, 0)
  end

  function lane_metrics.ended(job, it, on_time)
    local mk, sk = keys_of(job.lane)
    local actual, sync_usd, wasted = num(it.actual_usd), num(it.sync_usd), num(it.wasted_usd)
    add(mk, jobs_field(it.state, it.route), 1, 0)
    add(mk, on_time and 'on_time' or 'late', 1, 0)
    add(mk, 'actual_usd', actual, 0)
    add(mk, 'sync_equivalent_usd', sync_usd, 0)
    add(mk, 'saved_usd', sync_usd - actual, 0)
    add(mk, 'wasted_usd', wasted, 0)
    add(mk, 'deduplicated_saved_usd', num(it.dedup_saved_usd), 0)
    observe(mk, math.max(0, now_ms - (job.created_ms or now_ms)) / 1000)
    add(sk, slo_all, 1, 0)
    add(sk, on_time and slo_good or slo_bad, 1, 0)
    if it.route ~= 'batch' then add(sk, slo_sync, 1, 0) end
  end

  function lane_metrics.duplicate(lane, usd)
    local mk = keys_of(lane)
    add(mk, 'duplicate_usd', usd, 0)
  end

  lane_metrics.flush = tally.flush
  return lane_metrics
end
