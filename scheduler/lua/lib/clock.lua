-- Redis's clock (scheduler/clock.py): every Lua read of the time goes through here.

-- The server's time in epoch milliseconds.
local function server_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
