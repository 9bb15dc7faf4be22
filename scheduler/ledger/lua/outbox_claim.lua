-- The outbox's claim for kinds that load their items themselves (alerts): lib/outbox_claim.lua,
-- after settling what ended (lib/outbox_settle.lua) in the same step when outcomes are given.
-- uses: outbox_claim, outbox_settle
-- KEYS: 1 the due zset, 2 the dead-letter zset, 3 the global metrics hash (2 and 3: when settling).
-- ARGV 1-9: as lib/outbox_claim.lua says; 10 JSON array of outcomes to settle first (absent or '':
-- none), 11 the settle's now ms ('': the server's TIME), 12 '1' when a sent item's record is
-- deleted, 13 seconds a dead item's record is kept (the item hash key prefix is ARGV 5).
-- Returns {claimed ids, 1 when due items were left for lack of group room else 0}.
if ARGV[10] and ARGV[10] ~= '' then outbox_settle(ARGV[10], ARGV[11], ARGV[5], ARGV[12], ARGV[13]) end
local chosen, left = outbox_claim({})
return {chosen, left}
