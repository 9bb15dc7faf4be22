-- A scheduler leader's writes, run only while its fencing token is current, all or nothing: a
-- leader deposed mid-tick (paused past its lease) neither pages again nor overwrites its
-- successor's lane snapshot or incident state.
-- KEYS: 1 leader fence.  ARGV: 1 fencing token, 2 JSON array of commands, each [name, arg, ...]
-- Returns 'ok' | 'fenced'.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'fenced' end
for _, command in ipairs(cjson.decode(ARGV[2])) do
  redis.call(unpack(command))
end
return 'ok'
