-- The Redis server's own time, read inside a script (Redis 7, batchshift's floor, replicates a
-- script's effects, so a script may read TIME and then write).

-- Now on the server's clock, in epoch milliseconds, as the string a command argument takes.
local function server_time_ms()
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
