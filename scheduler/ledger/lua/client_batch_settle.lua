-- An abandoned client batch (its create died; see scheduler/compat/intake.py's cancel) after every
-- job it made was cancelled: the lines it never made a job of count as cancelled, and it ends.
-- KEYS: 1 client batch.  ARGV: 1 now ms.
-- Returns the lines counted here.
-- uses: client_batch
local rec = redis.call('HMGET', KEYS[1], 'state', 'total', 'ended')
if rec[1] ~= 'cancelling' then return 0 end
local unmade = tonumber(rec[2] or '0') - tonumber(rec[3] or '0')
if unmade > 0 then
  redis.call('HINCRBY', KEYS[1], 'cancelled', unmade)
  redis.call('HINCRBY', KEYS[1], 'ended', unmade)
end
close_client_batch(KEYS[1], ARGV[1])
return math.max(unmade, 0)
