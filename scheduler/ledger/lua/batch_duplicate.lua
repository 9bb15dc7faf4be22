-- A second provider batch carries one of our batch ids (a create that happened twice): record it as
-- its own batch, `submitted`, marked duplicate_of, so it is polled and ingested under its own
-- identity; its lines then lose to the first result of each job and count as duplicate spend.
-- KEYS: 1 duplicate batch, 2 original batch, 3 poll zset, 4 live zset, 5 provider index
-- ARGV: 1 duplicate batch id, 2 original batch id, 3 provider batch id, 4 now ms, 5 first poll ms,
--       6 poll interval s
-- Returns {'ok'} | {'known', batch id already holding that provider id} | {'missing'}.
local owner = redis.call('HGET', KEYS[5], ARGV[3])
if owner then return {'known', owner} end
local orig = redis.call('HMGET', KEYS[2], 'lane', 'provider', 'model', 'endpoint', 'requests', 'bytes',
  'planned_ms')
if not orig[1] then return {'missing'} end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'submitted', 'lane', orig[1], 'provider', orig[2],
  'model', orig[3], 'endpoint', orig[4], 'requests', orig[5], 'bytes', orig[6], 'planned_ms', orig[7],
  'attempts', 0, 'provider_batch_id', ARGV[3], 'submitted_ms', ARGV[4], 'next_poll_ms', ARGV[5],
  'poll_interval_s', ARGV[6], 'submitted_by', 'duplicate', 'duplicate_of', ARGV[2])
redis.call('HSET', KEYS[5], ARGV[3], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'duplicates', 1)
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return {'ok'}
