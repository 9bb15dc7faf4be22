-- Add a chunk of a batch's jobs to its deadline index (keys.batch_deadlines), scored by deadline:
-- only those still waiting on this batch (``batched``, with this batch id), as the SLO tracker's
-- first sight of the batch builds it (scheduler/slo/flips.py). One call per chunk of ids rather than
-- a read per job from Python; the index's expiry is the caller's.
-- KEYS: 1 the index.  ARGV: 1 batch id, 2.. job ids.
-- Returns how many jobs the index got.
local owner = ARGV[1]
local args, n = {}, 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HMGET', K.job(id), 'deadline_ms', 'state', 'batch_id')
  if rec[2] == 'batched' and rec[3] == owner and rec[1] then
    args[n + 1] = rec[1]
    args[n + 2] = id
    n = n + 2
  end
end
for i = 1, n, 1000 do
  redis.call('ZADD', KEYS[1], unpack(args, i, math.min(i + 999, n)))
end
return n / 2
