-- Record what happened to claimed webhook deliveries, each only while its claim is still ours
-- (a lease that ran out may have been claimed again by another worker, whose outcome then counts).
-- KEYS: 1 the due zset, 2 the dead-letter zset, 3 the global metrics hash.
-- ARGV: 1 JSON array of outcomes, 2 now ms, 3 delivery hash key prefix.
-- outcome: {id, token, action = 'delivered'|'retry'|'dead'|'disabled'|'released', attempted = bool,
--           next_ms = ?, status_code = ?, error = ?, disable_key = ?}
-- 'released' hands a claimed delivery back unsent and due now (its send could not end within
-- the lease); nothing else about it changes.
-- Returns the number of outcomes applied.
local outcomes = cjson.decode(ARGV[1])
local now = ARGV[2]
local applied = 0
local function opt(v) if v == nil or v == cjson.null then return nil end return v end
for _, o in ipairs(outcomes) do
  local hk = ARGV[3] .. o.id
  if redis.call('HGET', hk, 'lease') == o.token then
    redis.call('HDEL', hk, 'lease', 'lease_until')
    if o.action == 'released' then
      redis.call('ZADD', KEYS[1], now, o.id)
    else
      if o.attempted then
        redis.call('HINCRBY', hk, 'attempts', 1)
        redis.call('HSET', hk, 'last_attempt_ms', now, 'last_status', opt(o.status_code) or 0)
      end
      redis.call('HSET', hk, 'last_error', opt(o.error) or '')
      if o.action == 'delivered' then
        redis.call('ZREM', KEYS[1], o.id)
        redis.call('HSET', hk, 'status', 'delivered', 'delivered_ms', now, 'next_ms', '')
      elseif o.action == 'retry' then
        redis.call('ZADD', KEYS[1], o.next_ms, o.id)
        redis.call('HSET', hk, 'status', 'failing', 'next_ms', o.next_ms)
      else
        if o.action == 'disabled' and opt(o.disable_key) then
          redis.call('SET', o.disable_key, now)
        end
        redis.call('ZREM', KEYS[1], o.id)
        redis.call('ZADD', KEYS[2], now, o.id)
        redis.call('HSET', hk, 'status', o.action, 'dead_ms', now, 'next_ms', '')
      end
      redis.call('HINCRBY', KEYS[3], 'webhook:' .. o.action, 1)
    end
    applied = applied + 1
  end
end
return applied
