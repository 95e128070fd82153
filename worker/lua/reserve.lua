-- reserve: hold a call's worst case against its budgets before it is sent: the batch's own
-- (--max-cost at submit) and its pool's (the key's --max-cost, shared by all the key's batches and calls).
--
-- A budget is passed when what was spent plus the live holds plus this call pass its cap. Each budget's
-- record keeps the sum of its holds (`held_pico`), so a hold that fits costs a few commands however many
-- calls hold (a key's pool can have thousands in flight: scanning them all on every hold made it
-- quadratic). A hold whose holder's lease lapsed (its worker died) or whose deadline passed no longer
-- counts: the holds are scanned, the lapsed ones dropped and the sum recounted, only when a call does
-- not fit on the sum (stale holds can only make the sum too high). Time is Redis's (TIME). The batch's
-- holds take the record's lifetime; the pool's live at least as long as their longest deadline. A call
-- holds in both at once, or in neither. release.lua takes a hold back.
--
-- KEYS:
--   batch        HASH    the batch record (its spent_pico, and held_pico: the sum of its holds)
--   holds        HASH    custom_id -> "{pico} {deadline} {lease key}"
--   pool         HASH    the pool's record (the tenant hash: spent_pico, held_pico); '' for none
--   pool_holds   HASH    "{batch id} {custom_id}" -> "{pico} {deadline} {lease key}"; '' for none
-- ARGV:
--   custom_id    the request that holds
--   pico         its worst case, pico-dollars
--   max_pico     the batch budget, pico-dollars (0: none)
--   lease        the holder's lease key ('' for none)
--   hold_for     seconds the hold counts at most
--   pool_max     the pool's cap, pico-dollars (0: none)
--   pool_field   the hold's name in pool_holds
-- Returns: 1 held, 0 it can never fit in one of them (what was spent only grows), -1 it fits once
-- calls in flight settle.
local batch, holds, pool, pool_holds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local custom_id, lease, hold_for, pool_field = ARGV[1], ARGV[4], ARGV[5], ARGV[7]

-- Exact sums of pico-dollars. Lua's numbers are doubles, exact only to 2^53 pico (about $9,007): past
-- it a sum rounds, and a call could pass a cap by a few pico. An amount is kept as {high, low} with
-- low < 10^9, both exact, as are the sums of a few of them. (A negative figure counts as 0.)
local BASE = 1000000000
local function amount(text)
  text = tostring(text or '0')
  if not text:match('^%d+$') then return {0, 0} end
  local n = #text
  if n <= 9 then return {0, tonumber(text)} end
  return {tonumber(text:sub(1, n - 9)), tonumber(text:sub(n - 8))}
end
local function plus(a, b)
  local low = a[2] + b[2]
  return {a[1] + b[1] + math.floor(low / BASE), low % BASE}
end
local function over(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2]) end
local function text(a)
  if a[1] == 0 then return string.format('%.0f', a[2]) end
  return string.format('%.0f%09.0f', a[1], a[2])
end
local ZERO = {0, 0}
local pico, max_pico, pool_max = amount(ARGV[2]), amount(ARGV[3]), amount(ARGV[6])

-- each budget that applies: its record, its holds, this call's name there, its cap
local budgets = {}  -- (a batch record that is gone is never re-created: its budget is not held; the commit says gone)
if over(max_pico, ZERO) and redis.call('EXISTS', batch) == 1 then budgets[#budgets + 1] = {batch, holds, custom_id, max_pico} end
if pool ~= '' and over(pool_max, ZERO) then budgets[#budgets + 1] = {pool, pool_holds, pool_field, pool_max} end

local spent = {}
for i, b in ipairs(budgets) do
  spent[i] = amount(redis.call('HGET', b[1], 'spent_pico'))
  if over(plus(spent[i], pico), b[4]) then return 0 end
end
local now = tonumber(redis.call('TIME')[1])

-- this call's own earlier hold goes (a hold taken again replaces it)
for _, b in ipairs(budgets) do
  local old = redis.call('HGET', b[2], b[3])
  if old then
    redis.call('HDEL', b[2], b[3])
    local back = text(amount(string.match(old, '^(%d+)')))
    if back ~= '0' then redis.call('HINCRBY', b[1], 'held_pico', '-' .. back) end
  end
end

-- the live holds of `key`, the lapsed ones dropped: their sum
local function recount(key)
  local sum = ZERO
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local held, deadline, holder = string.match(all[i + 1], '^(%d+) (%d+) ?(.*)$')
    if held == nil or tonumber(deadline) < now or (holder ~= '' and redis.call('EXISTS', holder) == 0) then
      redis.call('HDEL', key, all[i])
    else
      sum = plus(sum, amount(held))
    end
  end
  return sum
end

local fits = true
for i, b in ipairs(budgets) do
  if over(plus(plus(spent[i], amount(redis.call('HGET', b[1], 'held_pico'))), pico), b[4]) then fits = false end
end
if not fits then  -- on the sums it does not fit: drop the lapsed holds, and look again
  for i, b in ipairs(budgets) do
    local held = recount(b[2])
    redis.call('HSET', b[1], 'held_pico', text(held))
    if over(plus(plus(spent[i], held), pico), b[4]) then return -1 end
  end
end

local value = text(pico) .. ' ' .. (now + tonumber(hold_for)) .. ' ' .. lease
for _, b in ipairs(budgets) do
  redis.call('HSET', b[2], b[3], value)
  redis.call('HINCRBY', b[1], 'held_pico', text(pico))
end
if #budgets > 0 and budgets[1][1] == batch then
  local life = redis.call('PTTL', batch)
  if life > 0 then redis.call('PEXPIRE', holds, life) end
end
local keep = math.max(tonumber(hold_for), 1)
if pool ~= '' and over(pool_max, ZERO) and redis.call('TTL', pool_holds) < keep then
  redis.call('EXPIRE', pool_holds, keep)
end
return 1
