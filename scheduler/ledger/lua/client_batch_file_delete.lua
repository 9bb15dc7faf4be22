-- Delete an ended client batch's output or error file: the batch keeps naming it (as OpenAI's
-- does), reading it answers 404. Only a batch whose lines have all ended has result files.
-- KEYS: 1 client batch.  ARGV: 1 'output' | 'errors', 2 now ms.
-- Returns 'deleted' | 'gone' (deleted before) | 'missing' (no batch) | 'live' (not ended).
local rec = redis.call('HMGET', KEYS[1], 'state', 'ended_ms', 'deleted_' .. ARGV[1])
if not rec[1] then return 'missing' end
if rec[3] and rec[3] ~= '' then return 'gone' end
if not rec[2] or rec[2] == '' then return 'live' end
redis.call('HSET', KEYS[1], 'deleted_' .. ARGV[1], ARGV[2])
return 'deleted'
