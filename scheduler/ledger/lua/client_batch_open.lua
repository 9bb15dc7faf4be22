-- Record a new client batch (state ``validating``) and list it for its tenant; an id already taken
-- changes nothing.
-- KEYS: 1 client batch, 2 tenant's client batch index.  ARGV: 1 batch id, 2 ttl s, 3.. field/value pairs.
-- Returns 'created' | 'exists'.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'validating', 'ended', 0, 'succeeded', 0, 'failed', 0, 'cancelled', 0,
  unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 'created'
