-- Delete an ended client batch's output or error file, or (Anthropic's ``DELETE``) the batch itself:
-- a deleted file reads as 404 while its batch keeps naming it (as OpenAI's does); a deleted batch
-- reads as 404 everywhere. Only a batch that is over (every line ended, or its window passed:
-- expired) has results to delete.
-- KEYS: 1 client batch.  ARGV: 1 'output' | 'errors' | 'batch', 2 now ms.
-- Returns 'deleted' | 'gone' (deleted before) | 'missing' (no batch) | 'live' (not ended).
local rec = redis.call('HMGET', KEYS[1], 'state', 'ended_ms', 'deleted_' .. ARGV[1], 'deleted_batch',
  'expires_ms')
if not rec[1] or (rec[4] and rec[4] ~= '') then return 'missing' end
if rec[3] and rec[3] ~= '' then return 'gone' end
local ended = rec[2] and rec[2] ~= ''
if not ended and tonumber(ARGV[2]) <= tonumber(rec[5] or '0') then return 'live' end
redis.call('HSET', KEYS[1], 'deleted_' .. ARGV[1], ARGV[2])
return 'deleted'
