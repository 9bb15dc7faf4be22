-- The outbox's settle on its own: lib/outbox_settle.lua (a claim settles what ended first, in its
-- own step; this is for what ends when there is nothing to claim).
-- uses: outbox_settle
-- KEYS: 1 the kind's due zset, 2 its dead-letter zset, 3 the global metrics hash.
-- ARGV: 1 JSON array of outcomes, 2 now ms ('': the Redis server's TIME, read here), 3 item hash
--       key prefix, 4 '1' when a sent item's record is deleted (else it stays, marked with its
--       status), 5 seconds a dead item's record is kept (0: until retention retires it).
-- Returns the number of outcomes applied.
return outbox_settle(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
