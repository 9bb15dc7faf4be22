-- Hand out sync jobs to run_sync tasks: each job in the sync queue (earliest deadline first) whose
-- dispatch lease is absent or ended gets a new lease and a new dispatch number. Leases of jobs that
-- left the sync queue (finished, cancelled, sent back) are dropped once they end.
-- Refused unless the caller holds the current leader fencing token.
-- KEYS: 1 sync queue (deadline zset), 2 leases (job -> lease end ms), 3 dispatch counts (hash),
--       4 leader fence
-- ARGV: 1 now ms, 2 lease end ms, 3 most to hand out, 4 fencing token
-- Returns a flat list {job id, dispatch number, ...}, or 'fenced'.
if redis.call('GET', KEYS[4]) ~= ARGV[4] then return 'fenced' end
local now, lease_end, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local ended = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(ended) do
  if not redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
-- Leased jobs are skipped, so look at most that many entries past the limit.
local cap = limit + redis.call('ZCARD', KEYS[2])
local ids = redis.call('ZRANGE', KEYS[1], 0, cap - 1)
local out = {}
local handed = 0
for _, id in ipairs(ids) do
  if handed >= limit then break end
  local lease = redis.call('ZSCORE', KEYS[2], id)
  if not lease or tonumber(lease) <= now then
    redis.call('ZADD', KEYS[2], lease_end, id)
    local n = redis.call('HINCRBY', KEYS[3], id, 1)
    out[#out + 1] = id
    out[#out + 1] = tostring(n)
    handed = handed + 1
  end
end
return out
