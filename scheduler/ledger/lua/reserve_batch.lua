-- Reserve up to a batch's caps of a lane's queued jobs into a planned batch, earliest deadline first
-- and none due after its deadline band (ARGV 12), one chunk per call so Redis is never blocked long. Refused unless the caller holds the current
-- fencing token, so a deposed scheduler leader's late tick changes nothing.
-- KEYS: 1 leader fence, 2 lane queue, 3 lane arrivals, 4 lane bytes, 5 batch, 6 batch jobs,
--       7 planned batches zset
-- ARGV: 1 fencing token, 2 batch id, 3 max requests, 4 max bytes, 5 chunk, 6 per-line overhead bytes,
--       7 now ms, 8 lane, 9 provider, 10 model, 11 endpoint, 12 latest deadline ms the batch holds
-- Returns {'fenced'} | {'ok', jobs taken, bytes taken, full (1 when the next job would not fit in the
-- caps, 2 when it is due after the band)}.
-- uses: reserve
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'fenced'} end
local batch_id = ARGV[2]
local max_requests, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local chunk, overhead = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = ARGV[7]
local until_ms = tonumber(ARGV[12])
local full = 0
local reserver = new_reserver(batch_id, now, max_requests, max_bytes, overhead)
local rows = redis.call('ZRANGE', KEYS[2], 0, chunk - 1, 'WITHSCORES')
for i = 1, #rows, 2 do
  local id = rows[i]
  local jk, size, tenant, prefix = reserver.queued(id)
  if jk then
    if not reserver.fits(size) then
      full = 1
      break
    end
    if tonumber(rows[i + 1]) > until_ms then
      full = 2
      break
    end
    reserver.take(id, jk, tenant, size, rows[i + 1], prefix)
  end
end
return reserver.finish(full, ARGV[8], ARGV[9], ARGV[10], ARGV[11])
