-- The submission lease of a planned batch: one submitter at a time, kept alive by its heartbeat.
-- Fields on the batch hash: lease_holder (the arq job id of the submission), lease_until_ms,
-- create_started_ms (set, under the lease, right before the provider's create call).
-- KEYS: 1 batch
-- ARGV: 1 mode: 'acquire' | 'renew' | 'create' (renew and stamp create_started_ms) | 'release',
--       2 holder, 3 now ms, 4 lease until ms, 5 create cutoff ms (acquire: a create begun after
--       this by another holder may still be answered, so the batch is not taken)
-- Returns {'ok', ''} | {'held', holder} | {'creating', create_started_ms} | {'skip', state} | {'missing', ''}.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
if state ~= 'planned' then return {'skip', state} end
local holder = redis.call('HGET', KEYS[1], 'lease_holder')
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0') or 0
local mine = holder == ARGV[2]
if ARGV[1] == 'acquire' then
  if not mine then
    if holder and until_ms > tonumber(ARGV[3]) then return {'held', holder} end
    local started = redis.call('HGET', KEYS[1], 'create_started_ms')
    if started and started ~= '' and tonumber(started) > tonumber(ARGV[5]) then
      return {'creating', started}
    end
  end
  redis.call('HSET', KEYS[1], 'lease_holder', ARGV[2], 'lease_until_ms', ARGV[4])
  return {'ok', ''}
end
if not mine then return {'held', holder or ''} end
if ARGV[1] == 'release' then
  redis.call('HDEL', KEYS[1], 'lease_holder', 'lease_until_ms')
  return {'ok', ''}
end
if ARGV[1] == 'create' then redis.call('HSET', KEYS[1], 'create_started_ms', ARGV[3]) end
redis.call('HSET', KEYS[1], 'lease_until_ms', ARGV[4])
return {'ok', ''}
