-- The webhook outbox's claim and load (workers/webhooks.py, Deliverer): claims due deliveries as
-- lib/outbox_claim.lua does and, in the same call, reads what each claimed delivery's message
-- needs (the delivery's fields; its job's view fields; the job's result; its URL's 410 mark), so
-- a delivery costs one script call, not a claim, a load and a read of the marks. What ended since
-- the last claim is settled first, in the same step (lib/outbox_settle.lua).
-- uses: outbox_claim, outbox_settle
-- KEYS: 1 the due zset, 2 the dead-letter zset, 3 the global metrics hash.
-- ARGV 1-9: as lib/outbox_claim.lua says; 10-13 what to settle first, as outbox_claim.lua says
-- (10 '': nothing); 14 number of delivery fields D (the first three must be job_id, tenant, url),
-- 15 number of job fields J, 16 number of known URLs H, then the D delivery field names, the J
-- job field names and H pairs of
-- "<tenant>\n<url>" and its keys.disabled_url hash (a SHA-256 Lua cannot make: the worker passes
-- those of URLs it has seen).
-- Returns {claimed ids, left (1/0), per claimed id its D delivery values, per claimed id its job's J
-- values (empty when it has no job_id), per claimed id the job's result, per claimed id 1 or 0 as
-- its URL is disabled or not (nil when its URL is not among the known)}; each missing value, or a
-- job or result that is gone, as nil.
local d = tonumber(ARGV[14])
local j = tonumber(ARGV[15])
local h = tonumber(ARGV[16])
local dfields = {}
for i = 1, d do dfields[i] = ARGV[16 + i] end
local jfields = {}
for i = 1, j do jfields[i] = ARGV[16 + d + i] end
local known = {}
for i = 16 + d + j + 1, 16 + d + j + 2 * h, 2 do known[ARGV[i]] = ARGV[i + 1] end
if ARGV[10] ~= '' then outbox_settle(ARGV[10], ARGV[11], ARGV[5], ARGV[12], ARGV[13]) end
local chosen, left, rows = outbox_claim(dfields)
local jobs = {}
local results = {}
local marks = {}
local disabled = {}  -- per URL hash, its mark, read once
for n = 1, #chosen do
  local row = rows[n]
  local jid = row[1]
  if jid then
    jobs[n] = redis.call('HMGET', K.job(jid), unpack(jfields))
    results[n] = redis.call('GET', K.result(jid))
  else
    jobs[n] = {}
    results[n] = false
  end
  local hash = known[(row[2] or '') .. '\n' .. (row[3] or '')]
  if hash then
    local mark = disabled[hash]
    if mark == nil then
      mark = redis.call('EXISTS', K.disabled_url(hash))
      disabled[hash] = mark
    end
    marks[n] = mark
  else
    marks[n] = false
  end
end
return {chosen, left, rows, jobs, results, marks}
