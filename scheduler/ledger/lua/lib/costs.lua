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

  function costs.ended(job, it, on_time)
    release_reservation(job.key, job.reserve_usd, job.reserve_key)
    local g = group(job, it.route)
    local actual, sync_usd, wasted = num(it.actual_usd), num(it.sync_usd), num(it.wasted_usd)
    add(g, 'jobs', 1)
    add(g, 'input_tokens', num(it.input_tokens))
    add(g, 'output_tokens', num(it.output_tokens))
    add(g, 'cached_input_tokens', num(it.cached_tokens))
    add(g, 'actual_usd', actual)
    add(g, 'sync_equivalent_usd', sync_usd)
    add(g, 'saved_usd', sync_usd - actual)
    add(g, 'wasted_usd', wasted)
    -- Deduplication (lib/dedup.lua): jobs answered by another job's call, and what sharing saved.
    if it.deduplicated then add(g, 'deduplicated_jobs', 1) end
    add(g, 'deduplicated_saved_usd', num(it.dedup_saved_usd))
    if it.route == 'sync' then add(g, 'sync_jobs', 1) end
    if it.route == 'flex' then add(g, 'flex_jobs', 1) end
    add(g, on_time and 'on_time' or 'late', 1)
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
