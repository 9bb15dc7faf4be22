-- The outbox's settle (workers/outbox.py): record what happened to claimed items, each only while
-- its claim is still ours (a lease that ran out may have been claimed again by another worker,
-- whose outcome then counts).
-- KEYS: 1 the kind's due zset, 2 its dead-letter zset, 3 the global metrics hash.
-- ARGV: 1 JSON array of outcomes, 2 now ms, 3 item hash key prefix,
--       4 '1' when a sent item's record is deleted (else it stays, marked with its status),
--       5 seconds a dead item's record is kept (0: until retention retires it).
-- outcome: {id, token, settle = 'done'|'retry'|'dead'|'released', status, attempted = bool,
--           next_ms = ?, status_code = ?, error = ?, set_key = ?, metric = ?}
-- 'released' hands a claimed item back unsent and due now (its send could not end within the
-- lease); nothing else about it changes. ``set_key`` is set to now (a webhook URL's 410 mark);
-- ``metric`` is a field of the metrics hash counted once.
-- Each attempt is also appended to the item's ``attempt_log`` (JSON [[ms, status, error], ...], the
-- last ATTEMPT_LOG_MAX), in this same step, for the console's job timeline.
-- Returns the number of outcomes applied.
local outcomes = cjson.decode(ARGV[1])
local now = ARGV[2]
local delete_done = ARGV[4] == '1'
local dead_ttl = tonumber(ARGV[5])
local applied = 0
local ATTEMPT_LOG_MAX = 20
local ATTEMPT_ERROR_CHARS = 200
local function opt(v) if v == nil or v == cjson.null then return nil end return v end
for _, o in ipairs(outcomes) do
  local hk = ARGV[3] .. o.id
  if redis.call('HGET', hk, 'lease') == o.token then
    redis.call('HDEL', hk, 'lease', 'lease_until')
    if o.settle == 'released' then
      redis.call('ZADD', KEYS[1], now, o.id)
    else
      if o.attempted then
        redis.call('HINCRBY', hk, 'attempts', 1)
        redis.call('HSET', hk, 'last_attempt_ms', now, 'last_status', opt(o.status_code) or 0)
        local log = cjson.decode(redis.call('HGET', hk, 'attempt_log') or '[]')
        log[#log + 1] = {tonumber(now), opt(o.status_code) or 0, string.sub(opt(o.error) or '', 1, ATTEMPT_ERROR_CHARS)}
        while #log > ATTEMPT_LOG_MAX do table.remove(log, 1) end
        redis.call('HSET', hk, 'attempt_log', cjson.encode(log))
      end
      redis.call('HSET', hk, 'last_error', opt(o.error) or '')
      if o.settle == 'done' then
        redis.call('ZREM', KEYS[1], o.id)
        if delete_done then
          redis.call('DEL', hk)
        else
          redis.call('HSET', hk, 'status', o.status, 'delivered_ms', now, 'next_ms', '')
        end
      elseif o.settle == 'retry' then
        redis.call('ZADD', KEYS[1], o.next_ms, o.id)
        redis.call('HSET', hk, 'status', o.status, 'next_ms', o.next_ms)
      else
        if opt(o.set_key) then redis.call('SET', o.set_key, now) end
        redis.call('ZREM', KEYS[1], o.id)
        redis.call('ZADD', KEYS[2], now, o.id)
        redis.call('HSET', hk, 'status', o.status, 'dead_ms', now, 'next_ms', '')
        if dead_ttl > 0 then redis.call('EXPIRE', hk, dead_ttl) end
      end
      if opt(o.metric) then redis.call('HINCRBY', KEYS[3], o.metric, 1) end
    end
    applied = applied + 1
  end
end
return applied
