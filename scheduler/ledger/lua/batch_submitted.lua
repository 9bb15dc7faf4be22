-- A planned batch was created at the provider (or found there by reconciliation): record its id.
-- Guarded: only a `planned` batch moves, and only to a provider batch no other batch of ours claims.
-- KEYS: 1 batch, 2 planned zset, 3 poll zset, 4 live zset, 5 provider index (provider id -> batch id)
-- ARGV: 1 provider batch id, 2 now ms, 3 first poll ms, 4 poll interval s, 5 how ('created'|'adopted')
-- Returns {'ok', 'planned'} | {'skip', state} | {'claimed', other batch id} | {'missing', ''}.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
if state ~= 'planned' then return {'skip', state} end
local id = redis.call('HGET', KEYS[1], 'id')
local owner = redis.call('HGET', KEYS[5], ARGV[1])
if owner and owner ~= id then return {'claimed', owner} end
redis.call('HSET', KEYS[1], 'state', 'submitted', 'provider_batch_id', ARGV[1], 'submitted_ms', ARGV[2],
  'next_poll_ms', ARGV[3], 'poll_interval_s', ARGV[4], 'submitted_by', ARGV[5])
redis.call('HSET', KEYS[5], ARGV[1], id)
redis.call('ZREM', KEYS[2], id)
redis.call('ZADD', KEYS[3], ARGV[3], id)
redis.call('ZADD', KEYS[4], ARGV[2], id)
return {'ok', 'planned'}
