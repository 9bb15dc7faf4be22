-- The outbox's claim (workers/outbox.py), for every kind of outbound item: completion webhooks
-- (webhook_claim.lua, which also reads what each claimed delivery's message needs), alert
-- notifications (outbox_claim.lua). Claims a slice of due items under a lease measured on the
-- processes' shared clock (ARGV 9: the Redis server's time in production), not the worker's own,
-- so a worker whose clock runs ahead cannot take items another worker is still sending.
-- A claim moves the score to the lease's end and records the lease in the item's hash; a worker
-- that dies with claims in hand gives them back by themselves when the lease runs out.
-- Fairness: each group (a webhook's tenant; alerts have none) may gain at most its room in one
-- claim (the caller passes what it still holds), so one tenant's backlog never fills a worker.
-- A run of refusals as long as a group's whole room ends the scan (the rest is that backlog).
-- A due entry whose record is gone (retired, or deleted once sent) is dropped from the due set.
-- KEYS: 1 the kind's due zset.
-- ARGV: 1 now ms (the caller's: which items are due; '': the shared clock's), 2 lease ms,
--       3 most to claim, 4 claim token, 5 item hash key prefix, 6 room of a group not listed,
--       7 JSON object group -> room, 8 most due entries to look at,
--       9 the shared clock's now ms (leases start and are judged from it; '': the Redis server's
--       TIME, read here, which saves the caller a round trip when that is its shared clock).
-- uses: bulk, server_time

-- Claim what ARGV describes; ``extra`` names more fields of each claimed item's hash to read (only
-- of those claimed: a claim behind a tenant's backlog looks at many it refuses). Returns the
-- claimed ids, 1 when due items were left for lack of group room else 0, and per claimed id its
-- record's values of ``extra`` (nil values as false).
local function outbox_claim(extra)
  local server = tonumber(ARGV[9] == '' and server_time_ms() or ARGV[9])
  local due = ARGV[1] == '' and server or ARGV[1]
  local lease_end = server + tonumber(ARGV[2])
  local want = tonumber(ARGV[3])
  local default_room = tonumber(ARGV[6])
  local rooms = cjson.decode(ARGV[7])
  local scan = tonumber(ARGV[8])
  local page = math.max(want, 100)
  local nextra = #extra

  -- Look first, write after: a claimed entry's new score takes it out of the range being paged.
  local chosen = {}
  local rows = {}
  local orphans = {}
  local left = 0
  local offset = 0
  -- Entries in a row refused for lack of room: a run as long as a whole group's room is one group's
  -- backlog (a backfill's thousands of deliveries to one tenant), and scanning on through it to the
  -- scan limit cost more Redis CPU per delivery than the rest of the pipeline's scripts together.
  local refused_run = 0
  while #chosen < want and offset < scan and refused_run < default_room do
    local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', due, 'LIMIT', offset, math.min(page, scan - offset))
    if #ids == 0 then break end
    offset = offset + #ids
    for _, id in ipairs(ids) do
      local hk = ARGV[5] .. id
      local f = redis.call('HMGET', hk, 'lease', 'lease_until', 'tenant')
      -- A field read proves the record is there (a webhook's tenant); with none, ask.
      if not (f[1] or f[2] or f[3]) and redis.call('EXISTS', hk) == 0 then
        orphans[#orphans + 1] = id
      else
        local held = f[1] and tonumber(f[2] or '0') > server  -- still leased: another worker is on it
        if not held then
          local group = f[3] or ''
          local room = rooms[group] or default_room
          if room > 0 then
            rooms[group] = room - 1
            chosen[#chosen + 1] = id
            if nextra > 0 then rows[#chosen] = redis.call('HMGET', hk, unpack(extra)) end
            refused_run = 0
            if #chosen >= want then break end
          else
            left = 1
            refused_run = refused_run + 1
            if refused_run >= default_room then break end
          end
        end
      end
    end
  end
  if offset >= scan then left = 1 end
  if #orphans > 0 then bulk('ZREM', KEYS[1], orphans) end
  if #chosen > 0 then bulk('ZADD', KEYS[1], chosen, lease_end) end
  for _, id in ipairs(chosen) do
    redis.call('HSET', ARGV[5] .. id, 'lease', ARGV[4], 'lease_until', lease_end)
  end
  return chosen, left, rows
end
