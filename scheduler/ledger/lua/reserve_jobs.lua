-- Reserve chosen queued jobs of a lane into a planned batch, in the order given (prefix grouping:
-- the planner picked them from the lane's deadline band). Refused unless the caller holds the
-- current fencing token. A job no longer queued in this lane is skipped (and dropped from the lane's
-- indexes when its record says it left); the caps still hold, checked here as reserve_batch does.
-- KEYS: 1 leader fence, 2 lane queue, 3 lane arrivals, 4 lane bytes, 5 batch, 6 batch jobs,
--       7 planned batches zset
-- ARGV: 1 fencing token, 2 batch id, 3 max requests, 4 max bytes, 5 per-line overhead bytes, 6 now ms,
--       7 lane, 8 provider, 9 model, 10 endpoint, 11.. job ids
-- Returns {'fenced'} | {'ok', jobs taken, bytes taken, full (1 when the next job would not fit the caps)}.
-- uses: reserve
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'fenced'} end
local batch_id = ARGV[2]
local max_requests, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local overhead, now = tonumber(ARGV[5]), ARGV[6]
local full = 0
local reserver = new_reserver(batch_id, now, max_requests, max_bytes, overhead)
for i = 11, #ARGV do
  local id = ARGV[i]
  local deadline = redis.call('ZSCORE', KEYS[2], id)
  if deadline then
    local jk, size, tenant, prefix = reserver.queued(id)
    if jk then
      if not reserver.fits(size) then
        full = 1
        break
      end
      reserver.take(id, jk, tenant, size, deadline, prefix)
    end
  end
end
return reserver.finish(full, ARGV[7], ARGV[8], ARGV[9], ARGV[10])
