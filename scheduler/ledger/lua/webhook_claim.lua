-- The webhook outbox's claim and load (workers/webhooks.py, Deliverer): claims due deliveries as
-- lib/outbox_claim.lua does and, in the same call, reads what each claimed delivery's message
-- needs (the delivery's fields, read in the claim's own HMGET; its job's view fields; the job's
-- result), so a delivery costs one script call, not a claim and a load.
-- uses: outbox_claim
-- KEYS: 1 the due zset. ARGV 1-9: as lib/outbox_claim.lua says; 10 number of delivery fields D
-- (the first must be job_id), 11 number of job fields J, then the D delivery field names and the
-- J job field names.
-- Returns {claimed ids, left (1/0), per claimed id its D delivery values, per claimed id its job's J
-- values (empty when it has no job_id), per claimed id the job's result}; each missing value, or a
-- job or result that is gone, as nil.
local d = tonumber(ARGV[10])
local j = tonumber(ARGV[11])
local dfields = {}
for i = 1, d do dfields[i] = ARGV[11 + i] end
local jfields = {}
for i = 1, j do jfields[i] = ARGV[11 + d + i] end
local chosen, left, rows = outbox_claim(dfields)
local jobs = {}
local results = {}
for n = 1, #chosen do
  local jid = rows[n][1]
  if jid then
    jobs[n] = redis.call('HMGET', K.job(jid), unpack(jfields))
    results[n] = redis.call('GET', K.result(jid))
  else
    jobs[n] = {}
    results[n] = false
  end
end
return {chosen, left, rows, jobs, results}
