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
local have = redis.call('HMGET', KEYS[5], 'requests', 'bytes')
local count, bytes = tonumber(have[1] or '0'), tonumber(have[2] or '0')
local taken, taken_bytes, full = 0, 0, 0
local reserver = new_reserver(batch_id, now)
for i = 11, #ARGV do
  local id = ARGV[i]
  local deadline = redis.call('ZSCORE', KEYS[2], id)
  if deadline then
    local jk = K.job(id)
    local rec = redis.call('HMGET', jk, 'state', 'size', 'tenant', 'prefix')
    if rec[1] ~= 'queued' then
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', KEYS[3], id)
    else
      local size = tonumber(rec[2] or '0')
      if count >= max_requests or (count > 0 and bytes + size + overhead > max_bytes) then
        full = 1
        break
      end
      reserver.take(id, jk, rec[3], size, deadline, rec[4])
      count = count + 1
      bytes = bytes + size + overhead
      taken = taken + 1
      taken_bytes = taken_bytes + size
    end
  end
end
reserver.flush()
if taken > 0 then
  reserve_record(batch_id, now, ARGV[7], ARGV[8], ARGV[9], ARGV[10], count, bytes, reserver.prefixed)
end
if full == 0 and count >= max_requests then full = 1 end
return {'ok', taken, taken_bytes, full}
