-- One guarded state change: from any state not listed it changes nothing and says so.
-- KEYS: 1 job.  ARGV: 1 comma-separated allowed prior states, 2 new state, 3.. field/value pairs.
-- Returns {'ok', prior} | {'refused', state} | {'missing', ''}.
-- uses: state
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
local allowed = {}
for s in string.gmatch(ARGV[1], '[^,]+') do allowed[#allowed + 1] = s end
if not contains(allowed, state) then return {'refused', state} end
local fields = {'state', ARGV[2]}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local job = redis.call('HMGET', KEYS[1], 'id', 'tenant')
if job[1] then restate(job[1], job[2], state, ARGV[2]) end
return {'ok', state}
