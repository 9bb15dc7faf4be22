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

  -- One observation of a histogram kept as per-bucket counts (metrics.py makes them cumulative);
  -- the bounds are keys.LATENCY_BUCKETS_S.
  local function observe(mk, name, seconds)
    local le = '+Inf'
    for _, bound in ipairs(LATENCY_BUCKETS_S) do
      if seconds <= bound then le = tostring(bound) break end
    end
    add(mk, name .. ':' .. le, 1, 0)
    add(mk, name .. ':count', 1, 0)
    add(mk, name .. ':sum', seconds, 0)
  end

  function lane_metrics.ended(job, it, on_time)
    local mk = K.lane_metrics(job.lane)
    local actual, sync_usd, wasted = num(it.actual_usd), num(it.sync_usd), num(it.wasted_usd)
    add(mk, 'jobs:' .. it.state .. ':' .. it.route, 1, 0)
    add(mk, on_time and 'on_time' or 'late', 1, 0)
    add(mk, 'actual_usd', actual, 0)
    add(mk, 'sync_equivalent_usd', sync_usd, 0)
    add(mk, 'saved_usd', sync_usd - actual, 0)
    add(mk, 'wasted_usd', wasted, 0)
    add(mk, 'deduplicated_saved_usd', num(it.dedup_saved_usd), 0)
    observe(mk, 'e2e', math.max(0, now_ms - (job.created_ms or now_ms)) / 1000)
    local sk = K.slo_buckets(job.lane)
    add(sk, bucket .. ':all', 1, 0)
    add(sk, bucket .. (on_time and ':good' or ':bad'), 1, 0)
    if it.route ~= 'batch' then add(sk, bucket .. ':sync', 1, 0) end
  end

  function lane_metrics.duplicate(lane, usd)
    add(K.lane_metrics(lane), 'duplicate_usd', usd, 0)
  end

  lane_metrics.flush = tally.flush
  return lane_metrics
end
