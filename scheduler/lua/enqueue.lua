-- Enqueue one job atomically: idempotency check, record, queue.
-- KEYS: 1 job, 2 queue (lane or sync), 3 lane arrivals, 4 lane bytes, 5 lane meta, 6 lanes set,
--       7 idempotency key ('' for none), 8 tenant index, 9 wakeup list, 10 tenant's state index,
--       11 tenant's feature index ('' for none), 12 tenant's feature names set, 13 tenants with indexes
-- ARGV: 1 job id, 2 request hash, 3 idempotency ttl s, 4 deadline ms, 5 created ms, 6 size,
--       7 lane, 8 provider, 9 model, 10 endpoint, 11 state (queued|sync), 12.. field/value pairs
-- Returns {'created'|'existing'|'conflict', job id}.
local idem = KEYS[7]
if idem ~= '' then
  local prior = redis.call('GET', idem)
  if prior then
    local sep = string.find(prior, '|', 1, true)
    local prior_id = string.sub(prior, 1, sep - 1)
    if string.sub(prior, sep + 1) == ARGV[2] then
      return {'existing', prior_id}
    end
    return {'conflict', prior_id}
  end
end
local id = ARGV[1]
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[11] == 'sync' then
  redis.call('ZADD', KEYS[2], ARGV[4], id)
else
  redis.call('ZADD', KEYS[2], ARGV[4], id)
  redis.call('ZADD', KEYS[3], ARGV[5], id)
  redis.call('INCRBY', KEYS[4], ARGV[6])
end
redis.call('HSETNX', KEYS[5], 'provider', ARGV[8])
redis.call('HSETNX', KEYS[5], 'model', ARGV[9])
redis.call('HSETNX', KEYS[5], 'endpoint', ARGV[10])
redis.call('SADD', KEYS[6], ARGV[7])
if idem ~= '' then
  redis.call('SET', idem, id .. '|' .. ARGV[2], 'EX', ARGV[3])
end
redis.call('ZADD', KEYS[8], 0, id)
redis.call('ZADD', KEYS[10], 0, id)
redis.call('SADD', KEYS[13], redis.call('HGET', KEYS[1], 'tenant'))
if KEYS[11] ~= '' then
  redis.call('ZADD', KEYS[11], 0, id)
  redis.call('SADD', KEYS[12], KEYS[11])
end
redis.call('LPUSH', KEYS[9], '1')
redis.call('LTRIM', KEYS[9], 0, 9)
return {'created', id}
