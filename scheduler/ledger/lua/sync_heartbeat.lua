-- Extend a running sync call's dispatch lease, to an end the caller computed from its clock, while that dispatch is still the
-- job's current one and the job still waits in the sync lane: a call that outlasts the lease is not
-- handed out again (and paid twice) while its worker lives; a dead worker stops beating, and its job
-- comes back once the lease ends.
-- The call's concurrency slot, when it holds one, lives as long as the lease.
-- KEYS: 1 leases (zset), 2 dispatch counts (hash), 3 the job, 4 the provider's sync slots (optional)
-- ARGV: 1 job id, 2 dispatch, 3 the lease's new end (ms), 4 the slot's token (with KEYS[4])
-- Returns the new lease end (ms), or 0 when the dispatch is no longer current.
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[3], 'state') ~= 'sync' then return 0 end
local lease_end = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], 'XX', 'GT', lease_end, ARGV[1])
if KEYS[4] then redis.call('ZADD', KEYS[4], 'XX', 'GT', lease_end, ARGV[4]) end
return lease_end
