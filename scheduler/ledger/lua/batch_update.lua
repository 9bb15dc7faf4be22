-- One guarded change of a batch record: only from an expected state; the batch indexes follow.
-- KEYS: 1 batch, 2 planned zset, 3 poll zset, 4 live zset, 5 failed zset, 6 closed zset (swept for
--       jobs left `batched` in a batch that will never move them), 7 ended zset (retention's age index)
-- ARGV: 1 comma-separated allowed states, 2 new state ('' keeps it), 3 next poll ms ('' leaves the
--       poll zset alone, 'del' removes the batch from it), 4 now ms, 5 field to increment by 1 ('' none),
--       6.. field/value pairs
-- Returns {'ok', prior state, incremented value or ''} | {'skip', state, ''} | {'missing', '', ''}.
-- uses: state
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', '', ''} end
local allowed = {}
for s in string.gmatch(ARGV[1], '[^,]+') do allowed[#allowed + 1] = s end
if not contains(allowed, state) then return {'skip', state, ''} end
local id = redis.call('HGET', KEYS[1], 'id')
local to = ARGV[2]
if #ARGV >= 6 then
  local fields = {}
  for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(fields))
end
local incremented = ''
if ARGV[5] ~= '' then incremented = tostring(redis.call('HINCRBY', KEYS[1], ARGV[5], 1)) end
if to ~= '' then redis.call('HSET', KEYS[1], 'state', to) end
if ARGV[3] == 'del' then
  redis.call('ZREM', KEYS[3], id)
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[3], id)
  redis.call('HSET', KEYS[1], 'next_poll_ms', ARGV[3])
end
-- Back to planned (a resubmission): its reconciliation clock starts again.
if to == 'planned' then redis.call('ZADD', KEYS[2], ARGV[4], id) end
if to == 'ingested' or to == 'failed' or to == 'cancelled' then
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
  if to == 'failed' then redis.call('ZADD', KEYS[5], ARGV[4], id) end
  if state ~= to then redis.call('ZADD', KEYS[6], ARGV[4], id) end
  redis.call('ZADD', KEYS[7], ARGV[4], id)
end
return {'ok', state, incremented}
