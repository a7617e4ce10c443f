-- shoal's registry on Redis (issue 11): every operation of the `Store` trait is one call of
-- this script (ARGV[1] names it), so it is one round trip and atomic.
--
-- KEYS[1] is the registry's base, "{PREFIX}": every key below is derived from it and so
-- shares its hash slot (Redis Cluster puts one registry on one shard; several prefixes
-- spread over shards). The layout is documented in docs/ARCHITECTURE.md ("The registry
-- on Redis"). Two namespaces, N = B..":c" for complete holders and B..":p" for partial ones
-- (downloads), hold the same keys:
--   N:hn        hash   holder address -> holder number
--   N:h:<h>     hash   a = address, f = host it is charged to (room for more fields)
--   N:lease     zset   holder number -> lease end (ms of the store's clock)
--   N:hl:<h>    set    listing numbers the holder has
--   N:l:<ln>    set    holder numbers of the listing (SRANDMEMBER picks one)
--   N:m         hash   listing number -> id(32 bytes) size chunk namelen name [lowercase name]
--   N:names     hash   lowercase name \0 name -> listing numbers (space separated)
--   N:ids       hash   id (32 bytes) -> listing numbers
--   N:a, N:ac   hash   host -> registrations / holders charged to it
-- and B:seq numbers holders and listings.
--
-- Time comes from the caller (ARGV[2], ms), so every index server on one registry, and a
-- test's injected clock, decide leases alike. Lua string comparison follows the server's
-- locale, so ties are broken byte by byte here.

local B = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local C, P = B .. ':c', B .. ':p'

local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function split(s)
  local t = {}
  if s then
    for w in string.gmatch(s, '%d+') do t[#t + 1] = w end
  end
  return t
end

local function list_add(hash, field, ln)
  local v = redis.call('HGET', hash, field)
  if v then
    redis.call('HSET', hash, field, v .. ' ' .. ln)
  else
    redis.call('HSET', hash, field, ln)
  end
end

local function list_remove(hash, field, ln)
  local keep = {}
  for _, x in ipairs(split(redis.call('HGET', hash, field))) do
    if x ~= ln then keep[#keep + 1] = x end
  end
  if #keep == 0 then
    redis.call('HDEL', hash, field)
  else
    redis.call('HSET', hash, field, table.concat(keep, ' '))
  end
end

-- id, name, lowercase name of a listing's meta value.
local function meta_parts(meta)
  local id = string.sub(meta, 1, 32)
  local _, e, _, _, len = string.find(meta, '^(%d+) (%d+) (%d+) ', 33)
  len = tonumber(len)
  local name = string.sub(meta, e + 1, e + len)
  local lower = string.sub(meta, e + len + 1)
  if lower == '' then lower = name end
  return id, name, lower
end

local function meta_id(N, ln)
  local m = redis.call('HGET', N .. ':m', ln)
  if m then return string.sub(m, 1, 32) end
  return ''
end

local function meta_name(N, ln)
  local m = redis.call('HGET', N .. ':m', ln)
  if not m then return '' end
  local _, name = meta_parts(m)
  return name
end

local function live(N, h)
  local e = redis.call('ZSCORE', N .. ':lease', h)
  return e ~= false and e ~= nil and now < tonumber(e)
end

local function live_holders(N, ln)
  local out = {}
  for _, h in ipairs(redis.call('SMEMBERS', N .. ':l:' .. ln)) do
    if live(N, h) then out[#out + 1] = h end
  end
  return out
end

-- A uniformly random live holder of listing ln: eight tries uniform over all holders (a
-- hit is uniform over the live ones), then an exact filter and the caller's random r.
local function pick_live(N, ln, r)
  for _, h in ipairs(redis.call('SRANDMEMBER', N .. ':l:' .. ln, -8)) do
    if live(N, h) then return h end
  end
  local hs = live_holders(N, ln)
  if #hs == 0 then return nil end
  return hs[(r % #hs) + 1]
end

-- The listing a key names and the listings whose holders count: by name ('n', v = the
-- names field), the id with the most live holders (ties: the smallest id); by id ('i'),
-- the listing with the most live holders (ties: the smallest name) and every listing of
-- the id. A single listing is returned uncounted (its holders are filtered anyway).
local function select(N, kind, v)
  local lns
  if kind == 'n' then
    lns = split(redis.call('HGET', N .. ':names', v))
  else
    lns = split(redis.call('HGET', N .. ':ids', v))
  end
  if #lns == 0 then return nil end
  if #lns == 1 then return lns[1], lns end
  local best, best_count, best_tie = nil, 0, nil
  for _, ln in ipairs(lns) do
    local c = #live_holders(N, ln)
    if c > 0 then
      local tie
      if kind == 'n' then tie = meta_id(N, ln) else tie = meta_name(N, ln) end
      if c > best_count or (c == best_count and less(tie, best_tie)) then
        best, best_count, best_tie = ln, c, tie
      end
    end
  end
  if best == nil then return nil end
  if kind == 'n' then return best, { best } end
  return best, lns
end

-- The best listing of a key and the live holders (deduplicated) of the listings counted.
local function holders_of(N, kind, v)
  local best, lns = select(N, kind, v)
  if not best then return nil end
  local seen, out = {}, {}
  for _, ln in ipairs(lns) do
    for _, h in ipairs(live_holders(N, ln)) do
      if not seen[h] then
        seen[h] = true
        out[#out + 1] = h
      end
    end
  end
  if #out == 0 then return nil end
  return best, out
end

local function addrs(N, hs)
  local out = {}
  for i, h in ipairs(hs) do out[i] = redis.call('HGET', N .. ':h:' .. h, 'a') end
  return out
end

local function remove_listing_if_empty(N, ln)
  if redis.call('EXISTS', N .. ':l:' .. ln) == 1 then return end
  local m = redis.call('HGET', N .. ':m', ln)
  redis.call('HDEL', N .. ':m', ln)
  if m then
    local id, name, lower = meta_parts(m)
    list_remove(N .. ':names', lower .. '\0' .. name, ln)
    list_remove(N .. ':ids', id, ln)
  end
end

local function remove_holder(N, h)
  local hk = N .. ':h:' .. h
  local addr = redis.call('HGET', hk, 'a')
  local from = redis.call('HGET', hk, 'f')
  redis.call('DEL', hk, N .. ':hl:' .. h)
  redis.call('ZREM', N .. ':lease', h)
  if addr then redis.call('HDEL', N .. ':hn', addr) end
  if from and redis.call('HINCRBY', N .. ':ac', from, -1) <= 0 then
    redis.call('HDEL', N .. ':ac', from)
    redis.call('HDEL', N .. ':a', from)
  end
end

local function charge(N, h, n)
  if n == 0 then return end
  local from = redis.call('HGET', N .. ':h:' .. h, 'f')
  if from then redis.call('HINCRBY', N .. ':a', from, n) end
end

-- Removes holder h from listings lns (nil: from all); the holder goes with its last one.
local function unregister_holder(N, h, lns)
  if lns == nil then lns = redis.call('SMEMBERS', N .. ':hl:' .. h) end
  local removed = 0
  for _, ln in ipairs(lns) do
    if redis.call('SREM', N .. ':hl:' .. h, ln) == 1 then
      redis.call('SREM', N .. ':l:' .. ln, h)
      remove_listing_if_empty(N, ln)
      removed = removed + 1
    end
  end
  charge(N, h, -removed)
  if redis.call('EXISTS', N .. ':hl:' .. h) == 0 then remove_holder(N, h) end
  return removed
end

local function unregister(N, addr, ids)
  local h = redis.call('HGET', N .. ':hn', addr)
  if not h then return 0 end
  if #ids == 0 then return unregister_holder(N, h, nil) end
  local lns = {}
  for _, id in ipairs(ids) do
    for _, ln in ipairs(split(redis.call('HGET', N .. ':ids', id))) do lns[#lns + 1] = ln end
  end
  return unregister_holder(N, h, lns)
end

local function find_listing(N, id, field)
  for _, ln in ipairs(split(redis.call('HGET', N .. ':names', field))) do
    if meta_id(N, ln) == id then return ln end
  end
  return nil
end

local function renew(N, addr, lease)
  local h = redis.call('HGET', N .. ':hn', addr)
  if not h or not live(N, h) then return false end
  redis.call('ZADD', N .. ':lease', now + lease, h)
  return redis.call('SCARD', N .. ':hl:' .. h)
end

-- Files start at ARGV[first], five values each: id, name, size, chunk, lowercase name
-- ('' when it equals the name).
local function files_from(first)
  local files = {}
  for i = first, #ARGV, 5 do
    local lower = ARGV[i + 4]
    local name = ARGV[i + 1]
    local l = lower
    if l == '' then l = name end
    files[#files + 1] = { id = ARGV[i], name = name, size = ARGV[i + 2], chunk = ARGV[i + 3],
      lower = lower, field = l .. '\0' .. name }
  end
  return files
end

-- Registry::register_within: caps of -1 are no cap. Returns the number of new
-- registrations, or {'holder', would, limit} / {'address', host, would, limit}.
local function register(N, addr, from, lease, per_holder, per_address, files)
  if #files == 0 then return 0 end
  local h = redis.call('HGET', N .. ':hn', addr)
  local is_live = h and live(N, h)
  local held = 0
  if is_live then held = redis.call('SCARD', N .. ':hl:' .. h) end
  local charged, charged_now
  if is_live then
    charged = redis.call('HGET', N .. ':h:' .. h, 'f') or from
    charged_now = tonumber(redis.call('HGET', N .. ':a', charged) or '0')
  else
    charged = from
    charged_now = tonumber(redis.call('HGET', N .. ':a', from) or '0')
    -- A lapsed holder's old registrations go before the new ones come.
    if h and redis.call('HGET', N .. ':h:' .. h, 'f') == from then
      charged_now = math.max(0, charged_now - redis.call('SCARD', N .. ':hl:' .. h))
    end
  end
  local function over(n, cap) return cap >= 0 and n > cap end
  if over(held + #files, per_holder) or over(charged_now + #files, per_address) then
    local new, seen = 0, {}
    for _, f in ipairs(files) do
      local ln = is_live and find_listing(N, f.id, f.field)
      local had = ln and redis.call('SISMEMBER', N .. ':l:' .. ln, h) == 1
      if not had and not seen[f.field .. f.id] then
        seen[f.field .. f.id] = true
        new = new + 1
      end
    end
    if over(held + new, per_holder) then return { 'holder', held + new, per_holder } end
    if over(charged_now + new, per_address) then
      return { 'address', charged, charged_now + new, per_address }
    end
  end
  if h and not is_live then
    unregister_holder(N, h, nil)
    h = nil
  end
  if not h then
    h = tostring(redis.call('INCR', B .. ':seq'))
    redis.call('HSET', N .. ':hn', addr, h)
    redis.call('HSET', N .. ':h:' .. h, 'a', addr, 'f', charged)
    redis.call('HINCRBY', N .. ':ac', charged, 1)
  end
  redis.call('ZADD', N .. ':lease', now + lease, h)
  local added = 0
  for _, f in ipairs(files) do
    local ln = find_listing(N, f.id, f.field)
    if not ln then
      ln = tostring(redis.call('INCR', B .. ':seq'))
      redis.call('HSET', N .. ':m', ln,
        f.id .. f.size .. ' ' .. f.chunk .. ' ' .. #f.name .. ' ' .. f.name .. f.lower)
      list_add(N .. ':names', f.field, ln)
      list_add(N .. ':ids', f.id, ln)
    end
    if redis.call('SADD', N .. ':l:' .. ln, h) == 1 then
      redis.call('SADD', N .. ':hl:' .. h, ln)
      added = added + 1
    end
  end
  charge(N, h, added)
  return added
end

local function sweep(N, batch)
  local out = {}
  for _, h in ipairs(redis.call('ZRANGEBYSCORE', N .. ':lease', '-inf', now, 'LIMIT', 0, batch)) do
    local addr = redis.call('HGET', N .. ':h:' .. h, 'a')
    local n = unregister_holder(N, h, nil)
    -- A holder that was already half gone (no address) is still removed, but not reported.
    if addr then
      out[#out + 1] = addr
      out[#out + 1] = n
    end
    if redis.call('EXISTS', N .. ':h:' .. h) == 1 then remove_holder(N, h) end
  end
  return out
end

local function ns(kind)
  if kind == 'p' then return P end
  return C
end

if op == 'register' then
  -- now, kind, lease, addr, from, per_holder, per_address, files...
  local N = ns(ARGV[3])
  local lease, addr, from = tonumber(ARGV[4]), ARGV[5], ARGV[6]
  local files = files_from(9)
  if N == P then renew(P, addr, lease) end
  local r = register(N, addr, from, lease, tonumber(ARGV[7]), tonumber(ARGV[8]), files)
  -- A complete registration replaces the holder's partial one of those files.
  if N == C and type(r) == 'number' and #files > 0 then
    local ids = {}
    for i, f in ipairs(files) do ids[i] = f.id end
    unregister(P, addr, ids)
  end
  return r
elseif op == 'unregister' then
  -- now, kind ('c' does both namespaces), addr, ids...
  local ids = {}
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
  if ARGV[3] == 'p' then return unregister(P, ARGV[4], ids) end
  local n = unregister(C, ARGV[4], ids)
  unregister(P, ARGV[4], ids)
  return n
elseif op == 'locate' then
  -- now, key kind, key, random
  local r = tonumber(ARGV[5])
  local best, lns = select(C, ARGV[3], ARGV[4])
  if not best then return false end
  local h
  if #lns == 1 then
    h = pick_live(C, lns[1], r)
  else
    local _, hs = holders_of(C, ARGV[3], ARGV[4])
    if hs then h = hs[(r % #hs) + 1] end
  end
  if not h then return false end
  -- With the holder's node-id binding (or false), as redis_locate.lua answers.
  local a = redis.call('HGET', C .. ':h:' .. h, 'a')
  return { redis.call('HGET', C .. ':m', best), a, redis.call('GET', B .. ':node:' .. a) }
elseif op == 'holders' then
  local best, hs = holders_of(C, ARGV[3], ARGV[4])
  if not best then return false end
  return { redis.call('HGET', C .. ':m', best), addrs(C, hs) }
elseif op == 'sources' then
  local best, hs = holders_of(C, ARGV[3], ARGV[4])
  local meta
  if best then
    meta = redis.call('HGET', C .. ':m', best)
  else
    local pbest = holders_of(P, ARGV[3], ARGV[4])
    if not pbest then return false end
    meta = redis.call('HGET', P .. ':m', pbest)
  end
  local _, phs = holders_of(P, 'i', string.sub(meta, 1, 32))
  return { meta, addrs(C, hs or {}), addrs(P, phs or {}) }
elseif op == 'renew' then
  -- now, lease, addr: renews both namespaces, answers for the complete one.
  local lease = tonumber(ARGV[3])
  renew(P, ARGV[4], lease)
  return renew(C, ARGV[4], lease)
elseif op == 'sweep' then
  -- now, batch: complete holders swept (address, count...), then partial ones (uncounted).
  local batch = tonumber(ARGV[3])
  local out = sweep(C, batch)
  local partial = sweep(P, batch)
  return { out, #partial }
elseif op == 'search' then
  -- now, kind, cursor, pattern, count: {next cursor, meta, live holders, ...}
  local N = ns(ARGV[3])
  local page = redis.call('HSCAN', N .. ':names', ARGV[4], 'MATCH', ARGV[5], 'COUNT', tonumber(ARGV[6]))
  local out = { page[1] }
  local fields = page[2]
  for i = 1, #fields, 2 do
    for _, ln in ipairs(split(fields[i + 1])) do
      local c = #live_holders(N, ln)
      if c > 0 then
        out[#out + 1] = redis.call('HGET', N .. ':m', ln)
        out[#out + 1] = c
      end
    end
  end
  return out
elseif op == 'count' then
  -- Diagnostics and tests: registrations, listings, holders of a namespace.
  local N = ns(ARGV[3])
  local regs = 0
  for _, h in ipairs(redis.call('ZRANGE', N .. ':lease', 0, -1)) do
    regs = regs + redis.call('SCARD', N .. ':hl:' .. h)
  end
  return { regs, redis.call('HLEN', N .. ':m'), redis.call('HLEN', N .. ':hn') }
end
return redis.error_reply('shoal registry script: unknown operation ' .. tostring(op))
