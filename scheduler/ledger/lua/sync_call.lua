-- A sync job's provider call in flight, and the spend of calls that may have been billed without an
-- answer we kept (a read timeout, a worker killed mid-call). The job's ``sync_call`` field holds
-- '<dispatch>:<expected usd>' while a call runs; ``sync_wasted_usd`` sums what such calls cost, and
-- the job's finish counts it into the wasted-spend aggregates.
-- KEYS: 1 the job.  ARGV: 1 'adopt' | 'begin' | 'end', 2 dispatch, 3 usd (begin: expected cost of the
-- call; end: what the call wasted, 0 when it was answered or surely not billed)
-- adopt: a call left by an earlier dispatch (its worker died mid-call) counts as wasted.
-- Returns the job's sync_wasted_usd after the step (as a string).
local mode, dispatch = ARGV[1], ARGV[2]
local call = redis.call('HGET', KEYS[1], 'sync_call')
local owner, cost
if call then owner, cost = string.match(call, '^([^:]*):(.*)$') end
if mode == 'adopt' then
  if call and owner ~= dispatch then
    redis.call('HINCRBYFLOAT', KEYS[1], 'sync_wasted_usd', tonumber(cost) or 0)
    redis.call('HDEL', KEYS[1], 'sync_call')
  end
elseif mode == 'begin' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('HSET', KEYS[1], 'sync_call', dispatch .. ':' .. ARGV[3])
  end
elseif owner == dispatch then
  redis.call('HDEL', KEYS[1], 'sync_call')
  if tonumber(ARGV[3]) > 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'sync_wasted_usd', ARGV[3]) end
end
return redis.call('HGET', KEYS[1], 'sync_wasted_usd') or '0'
