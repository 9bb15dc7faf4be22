-- Give the leader lease up at shutdown, only if still its holder, so a standby takes over at once.
-- KEYS: 1 lease.  ARGV: 1 holder id.  Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
