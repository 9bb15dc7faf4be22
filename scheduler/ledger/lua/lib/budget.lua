-- A tenant's monthly budget in Redis: billed spend (keys.budget_spend, summed by lib/costs.lua) and
-- the expected cost of admitted jobs not ended yet (keys.budget_committed), reserved here at enqueue
-- and released here when a job ends. scheduler/costs/budgets.py reads both.

-- What a `reject` envelope says to one more job of ``reserve_usd``: nil when it fits, else what the
-- month already holds (billed spend plus every admitted job's expected cost not yet settled).
local function budget_refusal(spend_key, committed_key, envelope_usd, reserve_usd)
  local held = tonumber(redis.call('GET', spend_key) or '0') + tonumber(redis.call('GET', committed_key) or '0')
  if held >= envelope_usd or held + reserve_usd > envelope_usd then return held end
  return nil
end

-- Reserve a job's expected cost (``usd``, as the caller sent it) and name the key on the job, so
-- its end releases exactly that.
local function reserve_budget(jk, committed_key, usd)
  redis.call('INCRBYFLOAT', committed_key, usd)
  redis.call('EXPIRE', committed_key, K.BUDGET_TTL_S)  -- as the spend key
  redis.call('HSET', jk, 'reserve_usd', usd, 'reserve_key', committed_key)
end

-- Release the budget a job reserved at enqueue once it ends; only once, since the fields go with it.
-- ``usd`` and ``key`` are the job's reserve_usd and reserve_key when the caller already read them
-- (false when absent); nil reads them here.
local function release_reservation(jk, usd, key)
  if usd == nil then usd, key = unpack(redis.call('HMGET', jk, 'reserve_usd', 'reserve_key')) end
  if usd and key and key ~= '' then
    redis.call('INCRBYFLOAT', key, -tonumber(usd))
    redis.call('HDEL', jk, 'reserve_usd', 'reserve_key')
  end
end
