-- Forget a tenant in the set of tenants with indexes once none of its indexes is left (atomic, so
-- an enqueue in between keeps it listed).
-- KEYS: 1 tenants set, 2 all jobs index, 3 deliveries index, 4 feature names set, 5.. state indexes.
-- ARGV: 1 tenant.  Returns 1 when forgotten.
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
return redis.call('SREM', KEYS[1], ARGV[1])
