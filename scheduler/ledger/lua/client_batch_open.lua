-- Record a new client batch (state ``validating``) and list it for its tenant; an id already taken
-- changes nothing. The tenant's index forgets ids older than the records' TTL (ids sort by time:
-- everything below the floors is gone), so it stays as small as the batches kept.
-- It is listed as validating (scored by its ``created_ms`` field) until client_batch_state.lua moves it on.
-- KEYS: 1 client batch, 2 tenant's client batch index, 3 the validating batches.
-- ARGV: 1 batch id, 2 ttl s, 3 and 4 the lowest ids still kept (OpenAI's and Anthropic's prefixes),
--       5.. field/value pairs.
-- Returns 'created' | 'exists'.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'validating', 'ended', 0, 'succeeded', 0, 'failed', 0,
  'cancelled', 0, unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
for _, floor in ipairs({ARGV[3], ARGV[4]}) do
  local prefix = string.sub(floor, 1, string.find(floor, '_', 1, true))
  redis.call('ZREMRANGEBYLEX', KEYS[2], '[' .. prefix, '(' .. floor)
end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[1], 'created_ms'), ARGV[1])
return 'created'
