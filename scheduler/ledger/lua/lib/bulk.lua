-- One command over many members (the outbox's claim and settle write their sets once per call).

-- Entries per call (well under Lua's stack limit on unpack).
local BULK_CHUNK = 200

-- ``cmd key member...`` over ``members``, with ``score`` before each member when given.
local function bulk(cmd, key, members, score)
  local args = {}
  for _, m in ipairs(members) do
    if score then args[#args + 1] = score end
    args[#args + 1] = m
    if #args >= BULK_CHUNK then
      redis.call(cmd, key, unpack(args))
      args = {}
    end
  end
  if #args > 0 then redis.call(cmd, key, unpack(args)) end
end
