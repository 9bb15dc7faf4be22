-- Read-only: the prompt prefix of each of a chunk of jobs ('' for none or a job gone), in the order
-- given, for ordering a batch's lines by prefix (workers/tasks/batches.py); one call per chunk
-- rather than a pipelined read per job.
-- ARGV: 1.. job ids.
local out = {}
for i = 1, #ARGV do
  out[i] = redis.call('HGET', K.job(ARGV[i]), 'prefix') or ''
end
return out
