-- shoal's holder -> node id bindings in Redis (see crates/index/src/nodes.rs and
-- docs/ARCHITECTURE.md "The registry on Redis"). KEYS[1] = {prefix}; ARGV[1] = operation.
--
-- {P}:node:<holder> = the node id (32 raw bytes) then the ms (store clock) of the claim
-- that last refreshed it, decimal. Live while now - seen <= lease; the key itself expires
-- (PX, ARGV keep) a while after, so lapsed bindings clean themselves up.
local base = KEYS[1]
local op = ARGV[1]

if op == 'claim' then
  -- now, lease, keep, holder, node: bound, live, to another id -> {'bound', id}; else
  -- set (or refresh) and {'ok', what was there or false}.
  local now, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
  local key = base .. ':node:' .. ARGV[5]
  local node = ARGV[6]
  local old = redis.call('GET', key)
  if old and string.sub(old, 1, 32) ~= node then
    local seen = tonumber(string.sub(old, 33))
    if seen and now - seen <= lease then
      return {'bound', string.sub(old, 1, 32)}
    end
  end
  redis.call('SET', key, node .. ARGV[2], 'PX', ARGV[4])
  return {'ok', old or false}
elseif op == 'undo' then
  -- keep, holder, node, previous ('' for none): only while the binding is still node's.
  local key = base .. ':node:' .. ARGV[3]
  local cur = redis.call('GET', key)
  if cur and string.sub(cur, 1, 32) == ARGV[4] then
    if ARGV[5] == '' then
      redis.call('DEL', key)
    else
      redis.call('SET', key, ARGV[5], 'PX', ARGV[2])
    end
  end
  return 1
elseif op == 'forget' then
  -- holder, node: only while the binding is node's.
  local key = base .. ':node:' .. ARGV[2]
  local cur = redis.call('GET', key)
  if cur and string.sub(cur, 1, 32) == ARGV[3] then
    redis.call('DEL', key)
  end
  return 1
end
return redis.error_reply('shoal nodes: unknown operation ' .. tostring(op))
