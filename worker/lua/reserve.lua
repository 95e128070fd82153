-- reserve: hold a call's worst case against the batch budget (--max-cost) before it is sent.
--
-- A hold whose holder's lease lapsed (its worker died) or whose deadline passed no longer counts,
-- and is dropped. Time is Redis's (TIME), not a machine's. The holds take the record's lifetime.
--
-- KEYS:
--   batch        HASH    the batch record (its spent_pico)
--   holds        HASH    custom_id -> "{pico} {deadline} {lease key}"
-- ARGV:
--   custom_id    the request that holds
--   pico         its worst case, pico-dollars
--   max_pico     the batch budget, pico-dollars
--   lease        the holder's lease key ('' for none)
--   hold_for     seconds the hold counts at most
-- Returns: 1 held, 0 it can never fit (what was spent only grows), -1 it fits once calls in flight settle.
local batch, holds = KEYS[1], KEYS[2]
local custom_id, pico, max_pico, lease, hold_for = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]

local spent = tonumber(redis.call('HGET', batch, 'spent_pico')) or 0
if spent + tonumber(pico) > max_pico then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1])
redis.call('HDEL', holds, custom_id)
local held = 0
local all = redis.call('HGETALL', holds)
for i = 1, #all, 2 do
  local amount, deadline, holder = string.match(all[i + 1], '^(%d+) (%d+) ?(.*)$')
  if amount == nil or tonumber(deadline) < now or (holder ~= '' and redis.call('EXISTS', holder) == 0) then
    redis.call('HDEL', holds, all[i])
  else
    held = held + tonumber(amount)
  end
end
if spent + held + tonumber(pico) > max_pico then return -1 end
redis.call('HSET', holds, custom_id, pico .. ' ' .. (now + tonumber(hold_for)) .. ' ' .. lease)
local life = redis.call('PTTL', batch)
if life > 0 then redis.call('PEXPIRE', holds, life) end
return 1
