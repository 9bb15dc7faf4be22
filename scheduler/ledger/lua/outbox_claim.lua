-- The outbox's claim for kinds that load their items themselves (alerts): lib/outbox_claim.lua.
-- uses: outbox_claim
-- KEYS and ARGV: as lib/outbox_claim.lua says.
-- Returns {claimed ids, 1 when due items were left for lack of group room else 0}.
local chosen, left = outbox_claim({})
return {chosen, left}
