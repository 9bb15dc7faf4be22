-- One guarded state change of a client batch: validating -> in_progress | failed, in_progress ->
-- cancelling. ``refused`` lines (refused at intake: no job) count as failed and ended at once.
-- A batch moving to in_progress or cancelling whose lines have all ended is stamped ended.
-- A batch leaving ``validating`` leaves the validating batches' index.
-- KEYS: 1 client batch, 2 the validating batches.  ARGV: 1 comma-separated allowed prior states, 2 new state, 3 now ms,
--       4 lines refused at intake, 5.. field/value pairs.
-- Returns {'ok', prior} | {'refused', state} | {'missing', ''}.
-- uses: state, client_batch
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
local allowed = {}
for s in string.gmatch(ARGV[1], '[^,]+') do allowed[#allowed + 1] = s end
if not contains(allowed, state) then return {'refused', state} end
-- A batch whose lines have all ended is over: cancelling it changes nothing.
local ended_ms = redis.call('HGET', KEYS[1], 'ended_ms')
if ARGV[2] == 'cancelling' and ended_ms and ended_ms ~= '' then return {'refused', 'completed'} end
local fields = {'state', ARGV[2]}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
if state == 'validating' then redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id')) end
local refused = tonumber(ARGV[4])
if refused > 0 then
  redis.call('HINCRBY', KEYS[1], 'failed', refused)
  redis.call('HINCRBY', KEYS[1], 'ended', refused)
end
close_client_batch(KEYS[1], ARGV[3])
return {'ok', state}
