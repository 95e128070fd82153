-- release: take a call's holds back (reserve.lua), in its batch's budget and its pool's, with their sums.
--
-- A hold already dropped (it lapsed, and a recount in reserve.lua removed it and its share of the sum)
-- changes nothing.
--
-- KEYS:
--   batch        HASH    the batch record (held_pico)
--   holds        HASH    custom_id -> "{pico} {deadline} {lease key}"
--   pool         HASH    the pool's record (held_pico); '' for none
--   pool_holds   HASH    the pool's holds; '' for none
-- ARGV:
--   custom_id    the call's name in holds
--   pool_field   its name in pool_holds
local batch, holds, pool, pool_holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local custom_id, pool_field = ARGV[1], ARGV[2]

local function take_back(record, key, field)
  local old = redis.call('HGET', key, field)
  if old then
    redis.call('HDEL', key, field)
    local back = (string.match(old, '^0*(%d+)') or '0')  -- as text: past 2^53 a Lua number rounds
    if back ~= '0' and redis.call('EXISTS', record) == 1 then
      redis.call('HINCRBY', record, 'held_pico', '-' .. back)
    end
  end
end

take_back(batch, holds, custom_id)
if pool ~= '' then take_back(pool, pool_holds, pool_field) end
return 1
