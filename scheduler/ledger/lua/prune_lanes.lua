-- Prune idle lanes: a lane goes only if it is still idle (its last enqueue at or before the cutoff)
-- and its queue is still empty when this runs, so a job enqueued in between keeps its lane. The
-- caller has already left out lanes with a batch planned or in flight.
-- KEYS: 1 active lanes zset, 2 lane registry set.  ARGV: 1 cutoff ms, 2.. lane names.
-- Returns the names pruned.
local cutoff = tonumber(ARGV[1])
local pruned = {}
for i = 2, #ARGV do
  local lane = ARGV[i]
  local last = redis.call('ZSCORE', KEYS[1], lane)
  if last and tonumber(last) <= cutoff and redis.call('ZCARD', K.lane_queue(lane)) == 0 then
    redis.call('ZREM', KEYS[1], lane)
    redis.call('SREM', KEYS[2], lane)
    redis.call('DEL', K.lane_arrivals(lane), K.lane_bytes(lane), K.lane_meta(lane))
    pruned[#pruned + 1] = lane
  end
end
return pruned
