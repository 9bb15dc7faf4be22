-- The scheduler leader lease: acquire it when free (and take a new fencing token), or renew it
-- only while still its holder.
-- KEYS: 1 lease, 2 fencing token counter.  ARGV: 1 holder id, 2 lease ms, 3 token held ('' for none)
-- Returns {'acquired', token} | {'renewed', token} | {'lost', ''}: 'lost' when another holds it.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  local token = redis.call('GET', KEYS[2])
  if ARGV[3] ~= '' and token == ARGV[3] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {'renewed', token}
  end
  -- Our id holds the lease but not with our token (we lost it and got it back): start afresh.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'acquired', tostring(redis.call('INCR', KEYS[2]))}
end
if holder then return {'lost', ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'acquired', tostring(redis.call('INCR', KEYS[2]))}
