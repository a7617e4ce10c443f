#!lua flags=no-writes
-- The hot path of `locate` (see redis.lua for the layout): a key naming one listing, and a
-- live holder among eight random picks, answered here in one call. Anything else (several
-- contents under the key, or eight lapsed picks) answers 'full' and the caller asks the
-- full script, which decides exactly as the registry does. Read-only, so it runs on a
-- replica and while Redis refuses writes (out of memory).
-- KEYS[1] = {PREFIX}; ARGV = now (ms), key kind ('n' | 'i'), key. Answers the file's meta,
-- the holder's address and its node-id binding (`{PREFIX}:node:<address>`, or false).
local C = KEYS[1] .. ':c'
local now = tonumber(ARGV[1])
local index = C .. ':names'
if ARGV[2] == 'i' then index = C .. ':ids' end
local ln = redis.call('HGET', index, ARGV[3])
if not ln then return false end
if string.find(ln, ' ', 1, true) then return 'full' end
local lease = C .. ':lease'
for _, h in ipairs(redis.call('SRANDMEMBER', C .. ':l:' .. ln, -8)) do
  local e = redis.call('ZSCORE', lease, h)
  if e and now < tonumber(e) then
    local a = redis.call('HGET', C .. ':h:' .. h, 'a')
    return { redis.call('HGET', C .. ':m', ln), a, redis.call('GET', KEYS[1] .. ':node:' .. a) }
  end
end
return 'full'
