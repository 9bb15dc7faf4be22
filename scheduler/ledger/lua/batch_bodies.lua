-- Read-only: the requests of a chunk of a batch's jobs, for its input file (workers/tasks/batches.py
-- batch_lines). Only jobs still waiting on this batch (``batched``, with this batch id) that have a
-- body; one call per chunk rather than a pipelined read per job.
-- ARGV: 1 batch id, 2.. job ids.
-- Returns a flat array: id, body, prefix ('' for none), for each job kept, in the order given.
local owner = ARGV[1]
local out, n = {}, 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local rec = redis.call('HMGET', K.job(id), 'state', 'batch_id', 'body', 'prefix')
  if rec[1] == 'batched' and rec[2] == owner and rec[3] and rec[3] ~= '' then
    out[n + 1] = id
    out[n + 2] = rec[3]
    out[n + 3] = rec[4] or ''
    n = n + 3
  end
end
return out
