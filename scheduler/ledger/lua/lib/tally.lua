-- Increments summed per key and field over a step, and written once at its end: a chunk of 500
-- jobs of one lane touches a few dozen aggregate fields, not tens of thousands.

-- A new tally. add(key, field, amount, ttl_s) sums a hash field (fields(key, ttl_s): the sums
-- themselves); member(key, value, ttl_s) adds to
-- a set; incr(key, amount, ttl_s) sums a float string; flush() writes them all (ttl_s 0: no TTL).
local function new_tally()
  local sums, sum_keys, members, member_keys, incrs, incr_keys, ttl_of = {}, {}, {}, {}, {}, {}, {}
  local t = {}

  -- The table of ``key``'s field sums, for a caller that adds many figures per job: it adds as
  -- add() does (skipping zeros) without a call per figure. A key left empty writes nothing.
  function t.fields(key, ttl_s)
    local fields = sums[key]
    if not fields then
      fields = {}
      sums[key] = fields
      sum_keys[#sum_keys + 1] = key
      ttl_of[key] = ttl_s
    end
    return fields
  end

  function t.add(key, field, amount, ttl_s)
    if amount == 0 then return end
    local fields = t.fields(key, ttl_s)
    fields[field] = (fields[field] or 0) + amount
  end

  function t.member(key, value, ttl_s)
    local set = members[key]
    if not set then
      set = {}
      members[key] = set
      member_keys[#member_keys + 1] = key
      ttl_of[key] = ttl_s
    end
    set[value] = true
  end

  function t.incr(key, amount, ttl_s)
    if not incrs[key] then
      incr_keys[#incr_keys + 1] = key
      ttl_of[key] = ttl_s
    end
    incrs[key] = (incrs[key] or 0) + amount
  end

  function t.flush()
    for _, key in ipairs(member_keys) do
      local list = {}
      for value in pairs(members[key]) do list[#list + 1] = value end
      redis.call('SADD', key, unpack(list))
      if ttl_of[key] > 0 then redis.call('EXPIRE', key, ttl_of[key]) end
    end
    for _, key in ipairs(sum_keys) do
      for field, amount in pairs(sums[key]) do
        -- By name, not by value: a dollar sum that happens to be whole must still add as a float,
        -- or HINCRBY fails on the field's earlier fractional value.
        if string.sub(field, -4) == '_usd' or string.sub(field, -4) == ':sum' then
          redis.call('HINCRBYFLOAT', key, field, amount)
        else
          redis.call('HINCRBY', key, field, amount)
        end
      end
      if ttl_of[key] > 0 then redis.call('EXPIRE', key, ttl_of[key]) end
    end
    for _, key in ipairs(incr_keys) do
      redis.call('INCRBYFLOAT', key, incrs[key])
      if ttl_of[key] > 0 then redis.call('EXPIRE', key, ttl_of[key]) end
    end
  end

  return t
end
