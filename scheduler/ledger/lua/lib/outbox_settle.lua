-- The outbox's settle (workers/outbox.py): record what happened to claimed items, each only while
-- its claim is still ours (a lease that ran out may have been claimed again by another worker,
-- whose outcome then counts). Run alone (outbox_settle.lua) or first in a claim's step
-- (outbox_claim.lua, webhook_claim.lua), so one call settles what ended and claims what is next.
-- uses: bulk, server_time
-- KEYS: 1 the kind's due zset, 2 its dead-letter zset, 3 the global metrics hash.
-- outcome: [id, token, settle = 'done'|'retry'|'dead'|'released', status, attempted = bool,
--           next_ms = ?, status_code = ?, error = ?, set_key = ?, metric = ?, delay_ms = ?] (an
--           array, in this order: workers.outbox.Outcome.row); a retry without next_ms is due
--           delay_ms after now.
-- 'released' hands a claimed item back unsent and due now (its send could not end within the
-- lease); nothing else about it changes. ``set_key`` is set to now (a webhook URL's 410 mark);
-- ``metric`` is a field of the metrics hash counted once.
-- Each attempt is also appended to the item's ``attempt_log`` (JSON [[ms, status, error], ...], the
-- last ATTEMPT_LOG_MAX, each error cut to ATTEMPT_ERROR_CHARS bytes of whole characters), in this
-- same step, for the console's job timeline.
-- Each item costs a read, a delete of its lease and one write of its fields; the due and dead
-- sets and the metrics are written once per call.

local ATTEMPT_LOG_MAX = 20
local ATTEMPT_ERROR_CHARS = 200

local function outbox_opt(v) if v == nil or v == cjson.null then return nil end return v end

-- ``s`` cut to at most ``n`` bytes, never inside a UTF-8 character: the console parses the log as
-- JSON, which a split character makes invalid.
local function outbox_cut(s, n)
  if #s <= n then return s end
  local b = string.byte(s, n + 1)
  while n > 0 and b >= 128 and b < 192 do  -- a continuation byte: its character began before it
    n = n - 1
    b = string.byte(s, n + 1)
  end
  return string.sub(s, 1, n)
end

-- Apply ``outcomes_json`` (a JSON array of outcomes) at ``now`` (epoch ms; '': the Redis server's
-- TIME) to the items under hash key ``prefix``; ``delete_done_arg`` '1' deletes a sent item's record
-- (else it stays, marked with its status), ``dead_ttl_arg`` is how many seconds a dead item's record
-- is kept (0: until retention retires it). Returns the number of outcomes applied.
local function outbox_settle(outcomes_json, now, prefix, delete_done_arg, dead_ttl_arg)
  local outcomes = cjson.decode(outcomes_json)
  if now == '' then now = server_time_ms() end
  local now_n = tonumber(now)
  local now_text = tostring(now_n) == now and now or nil  -- now as cjson writes the number, when it is
  local delete_done = delete_done_arg == '1'
  local dead_ttl = tonumber(dead_ttl_arg)
  local applied = 0
  local released, done, retry, dead = {}, {}, {}, {}
  local metrics = {}
  for _, o in ipairs(outcomes) do
    local id, token, settle, status, attempted = o[1], o[2], o[3], o[4], o[5]
    local next_ms, status_code, err, set_key, metric = outbox_opt(o[6]), outbox_opt(o[7]), outbox_opt(o[8]), outbox_opt(o[9]), outbox_opt(o[10])
    if next_ms == nil and outbox_opt(o[11]) then next_ms = now_n + o[11] end
    local hk = prefix .. id
    local f = redis.call('HMGET', hk, 'lease', 'attempts', 'attempt_log')
    if f[1] == token then
      redis.call('HDEL', hk, 'lease', 'lease_until')
      if settle == 'released' then
        released[#released + 1] = id
      else
        local gone = settle == 'done' and delete_done
        if not gone then
          local fields = {'last_error', err or ''}
          if attempted then
            local code = status_code or 0
            local entry = {now_n, code, outbox_cut(err or '', ATTEMPT_ERROR_CHARS)}
            local text
            if f[3] then
              local log = cjson.decode(f[3])
              log[#log + 1] = entry
              while #log > ATTEMPT_LOG_MAX do table.remove(log, 1) end
              text = cjson.encode(log)
            elseif now_text then
              -- The first attempt, written as cjson writes {entry}: numbers as %.14g (tostring's
              -- format, which now_text was checked to be), the error as a JSON string.
              text = '[[' .. now_text .. ',' .. tostring(code) .. ',' .. cjson.encode(entry[3]) .. ']]'
            else
              text = '[' .. cjson.encode(entry) .. ']'
            end
            local n = #fields
            fields[n + 1] = 'attempts'
            fields[n + 2] = (tonumber(f[2]) or 0) + 1
            fields[n + 3] = 'last_attempt_ms'
            fields[n + 4] = now
            fields[n + 5] = 'last_status'
            fields[n + 6] = code
            fields[n + 7] = 'attempt_log'
            fields[n + 8] = text
          end
          local n = #fields
          fields[n + 1] = 'status'
          fields[n + 2] = status
          fields[n + 3] = 'next_ms'
          if settle == 'done' then
            fields[n + 4] = ''
            fields[n + 5] = 'delivered_ms'
            fields[n + 6] = now
          elseif settle == 'retry' then
            fields[n + 4] = next_ms
          else
            fields[n + 4] = ''
            fields[n + 5] = 'dead_ms'
            fields[n + 6] = now
          end
          redis.call('HSET', hk, unpack(fields))
        end
        if settle == 'done' then
          done[#done + 1] = id
          if gone then redis.call('DEL', hk) end
        elseif settle == 'retry' then
          retry[#retry + 1] = next_ms
          retry[#retry + 1] = id
        else
          if set_key then redis.call('SET', set_key, now) end
          dead[#dead + 1] = id
          if dead_ttl > 0 then redis.call('EXPIRE', hk, dead_ttl) end
        end
        if metric then metrics[metric] = (metrics[metric] or 0) + 1 end
      end
      applied = applied + 1
    end
  end
  if #released > 0 then bulk('ZADD', KEYS[1], released, now) end
  if #done > 0 then bulk('ZREM', KEYS[1], done) end
  for i = 1, #retry, BULK_CHUNK do
    redis.call('ZADD', KEYS[1], unpack(retry, i, math.min(i + BULK_CHUNK - 1, #retry)))
  end
  if #dead > 0 then
    bulk('ZREM', KEYS[1], dead)
    bulk('ZADD', KEYS[2], dead, now)
  end
  for metric, n in pairs(metrics) do redis.call('HINCRBY', KEYS[3], metric, n) end
  return applied
end
