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
      local mk, sk = K.lane_metrics(lane), K.slo_buckets(lane)
      k = {mk, sk, tally.fields(mk, 0), tally.fields(sk, 0)}
      lane_keys[lane] = k
    end
    return k
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

  local null = cjson.null
  local function n0(v)  -- num() of lib/json.lua in one call
    if v == nil or v == null then return 0 end
    return tonumber(v)
  end

  -- A job's figures go straight into its lane's sums (tally.fields), zeros skipped as add() skips
  -- them: a dozen figures per job, no call for each.
  function lane_metrics.ended(job, it, on_time)
    local k = keys_of(job.lane)
    local m, sl = k[3], k[4]
    local actual, sync_usd, wasted = n0(it.actual_usd), n0(it.sync_usd), n0(it.wasted_usd)
    local f = jobs_field(it.state, it.route)
    m[f] = (m[f] or 0) + 1
    if on_time then m.on_time = (m.on_time or 0) + 1 else m.late = (m.late or 0) + 1 end
    if actual ~= 0 then m.actual_usd = (m.actual_usd or 0) + actual end
    if sync_usd ~= 0 then m.sync_equivalent_usd = (m.sync_equivalent_usd or 0) + sync_usd end
    local v = sync_usd - actual
    if v ~= 0 then m.saved_usd = (m.saved_usd or 0) + v end
    if wasted ~= 0 then m.wasted_usd = (m.wasted_usd or 0) + wasted end
    v = n0(it.dedup_saved_usd)
    if v ~= 0 then m.deduplicated_saved_usd = (m.deduplicated_saved_usd or 0) + v end
    -- The end-to-end histogram, kept as per-bucket counts (metrics.py makes them cumulative); the
    -- bounds are keys.LATENCY_BUCKETS_S.
    local seconds = math.max(0, now_ms - (job.created_ms or now_ms)) / 1000
    local le = e2e_inf
    for i = 1, #e2e_bounds do
      if seconds <= e2e_bounds[i] then le = e2e_fields[i] break end
    end
    m[le] = (m[le] or 0) + 1
    m['e2e:count'] = (m['e2e:count'] or 0) + 1
    if seconds ~= 0 then m['e2e:sum'] = (m['e2e:sum'] or 0) + seconds end
    sl[slo_all] = (sl[slo_all] or 0) + 1
    local q = on_time and slo_good or slo_bad
    sl[q] = (sl[q] or 0) + 1
    if it.route ~= 'batch' then sl[slo_sync] = (sl[slo_sync] or 0) + 1 end
  end

  function lane_metrics.duplicate(lane, usd)
    add(keys_of(lane)[1], 'duplicate_usd', usd, 0)
  end

  lane_metrics.flush = tally.flush
  return lane_metrics
end
