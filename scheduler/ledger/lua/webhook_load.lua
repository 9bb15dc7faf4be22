-- The webhook outbox's load (workers/webhooks.py, Deliverer._load): what each claimed delivery's
-- message needs, in one call instead of three commands per delivery (the delivery's fields, its
-- job's view fields, the job's result). Reads only.
-- ARGV: 1 number of delivery fields D (the first must be job_id), 2 number of job fields J,
--       then the D delivery field names, the J job field names, and the delivery ids.
-- Returns one flat array: per delivery id, its D values, its job's J values and the job's result
-- (each missing value, or a job or result that is gone, as nil).
local d = tonumber(ARGV[1])
local j = tonumber(ARGV[2])
local dfields = {}
for i = 1, d do dfields[i] = ARGV[2 + i] end
local jfields = {}
for i = 1, j do jfields[i] = ARGV[2 + d + i] end
local out = {}
local n = 0
for a = 3 + d + j, #ARGV do
  local values = redis.call('HMGET', K.webhook_delivery(ARGV[a]), unpack(dfields))
  for i = 1, d do n = n + 1; out[n] = values[i] end
  local jid = values[1]
  if jid then
    local job = redis.call('HMGET', K.job(jid), unpack(jfields))
    for i = 1, j do n = n + 1; out[n] = job[i] end
    n = n + 1; out[n] = redis.call('GET', K.result(jid))
  else
    for _ = 1, j + 1 do n = n + 1; out[n] = false end
  end
end
return out
