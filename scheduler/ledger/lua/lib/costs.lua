-- What ended jobs cost: the per-day, per-tenant aggregates reports read (keys.agg_*, read by
-- scheduler/costs/reports.py) and what they add to the tenant's monthly spend (keys.budget_spend); the
-- job's reservation is released through lib/budget.lua.
-- uses: tally, json, budget

-- The costs of one step's jobs, counted on ``day`` (YYYY-MM-DD) and ``month`` (YYYY-MM), the
-- aggregates kept ``agg_ttl_s``. ended(job, item, on_time) counts a job's end and releases its
-- reservation; duplicate(job, route, usd) counts a billed result nobody uses; flush() writes.
-- ``job`` holds its record's key, tenant, feature, lane, model and reservation (finish.lua reads
-- them once).
-- Figures add up per (tenant, feature, lane, model, route) group first and are spread over the
-- group's hashes (its tenant's day total and one per keys.AGG_DIMENSIONS) once, at flush: most
-- chunks hold one or two groups.
local function new_costs(day, month, agg_ttl_s)
  local tally = new_tally()
  local groups, order = {}, {}
  local costs = {}

  -- Groups are found through nested tables (tenant, feature, lane, model, route) rather than a
  -- joined string: building that string for every job cost more than the rest of its costs.
  local index = {}
  local function child(t, k)
    local c = t[k]
    if not c then
      c = {}
      t[k] = c
    end
    return c
  end

  local function group(job, route)
    local feature = job.feature or ''
    if feature == '' then feature = '-' end
    local level = child(child(child(child(index, job.tenant), feature), job.lane), job.model)
    local g = level[route]
    if not g then
      g = {tenant = job.tenant, values = {feature = feature, lane = job.lane, model = job.model, route = route},
        sums = {}}
      level[route] = g
      order[#order + 1] = #order + 1
      groups[#order] = g
    end
    return g
  end

  local function add(g, field, amount)
    if amount ~= 0 then g.sums[field] = (g.sums[field] or 0) + amount end
  end

  local spend_keys = {}
  local function spend(tenant, amount)
    if amount > 0 then
      local key = spend_keys[tenant]
      if not key then
        key = K.budget_spend(tenant, month)
        spend_keys[tenant] = key
      end
      tally.incr(key, amount, K.BUDGET_TTL_S)
    end
  end

  -- num() of lib/json.lua in one call: an item's figure, 0 when absent or null.
  local null = cjson.null
  local function n0(v)
    if v == nil or v == null then return 0 end
    return tonumber(v)
  end

  -- As add(g, field, amount) for each figure, written out: a chunk's jobs each make a dozen.
  function costs.ended(job, it, on_time)
    release_reservation(job.key, job.reserve_usd, job.reserve_key)
    local route = it.route
    local s = group(job, route).sums
    local actual, sync_usd, wasted = n0(it.actual_usd), n0(it.sync_usd), n0(it.wasted_usd)
    s.jobs = (s.jobs or 0) + 1
    local v = n0(it.input_tokens)
    if v ~= 0 then s.input_tokens = (s.input_tokens or 0) + v end
    v = n0(it.output_tokens)
    if v ~= 0 then s.output_tokens = (s.output_tokens or 0) + v end
    v = n0(it.cached_tokens)
    if v ~= 0 then s.cached_input_tokens = (s.cached_input_tokens or 0) + v end
    if actual ~= 0 then s.actual_usd = (s.actual_usd or 0) + actual end
    if sync_usd ~= 0 then s.sync_equivalent_usd = (s.sync_equivalent_usd or 0) + sync_usd end
    v = sync_usd - actual
    if v ~= 0 then s.saved_usd = (s.saved_usd or 0) + v end
    if wasted ~= 0 then s.wasted_usd = (s.wasted_usd or 0) + wasted end
    -- Deduplication (lib/dedup.lua): jobs answered by another job's call, and what sharing saved.
    if it.deduplicated then s.deduplicated_jobs = (s.deduplicated_jobs or 0) + 1 end
    v = n0(it.dedup_saved_usd)
    if v ~= 0 then s.deduplicated_saved_usd = (s.deduplicated_saved_usd or 0) + v end
    if route == 'sync' then s.sync_jobs = (s.sync_jobs or 0) + 1 end
    if route == 'flex' then s.flex_jobs = (s.flex_jobs or 0) + 1 end
    if on_time then s.on_time = (s.on_time or 0) + 1 else s.late = (s.late or 0) + 1 end
    spend(job.tenant, actual + wasted)
  end

  function costs.duplicate(job, route, usd)
    add(group(job, route), 'duplicate_usd', usd)
    spend(job.tenant, usd)
  end

  function costs.flush()
    for _, id in ipairs(order) do
      local g = groups[id]
      tally.member(K.agg_tenants(day), g.tenant, agg_ttl_s)
      local hashes = {K.agg_total(day, g.tenant)}
      for _, dim in ipairs(K.AGG_DIMENSIONS) do
        tally.member(K.agg_values(day, g.tenant, dim), g.values[dim], agg_ttl_s)
        hashes[#hashes + 1] = K.agg_group(day, g.tenant, dim, g.values[dim])
      end
      for field, amount in pairs(g.sums) do
        for _, key in ipairs(hashes) do tally.add(key, field, amount, agg_ttl_s) end
      end
    end
    tally.flush()
  end

  return costs
end
