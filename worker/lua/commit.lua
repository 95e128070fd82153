-- commit: store final results of one batch, each once, and count each once: one line, or a group.
--
-- Writes the lines; counts them in the batch record, the hourly and the per-batch aggregates;
-- publishes one event per line; closes the batch when its last result lands. Never re-creates a
-- batch record that is gone. What the providers billed goes on the batch and, in the same call, on
-- its pool (the key's spend, live and exact, which the pool's holds in reserve.lua are checked on).
--
-- One line (the rules every group reduces to): the same line sent again (a client's resend after a
-- timeout) changes nothing; another answer for a request that already has one (a duplicate
-- execution) only adds its spend, once per answer; a line past the batch's total is stored but not
-- counted.
-- A group (several lines of one batch and one hour, from one worker's event loop) is written only
-- when every line is new, no id repeats and the batch has room for all: then it is exactly the
-- lines one by one, with the sums added once. Otherwise nothing is written and the reply is empty:
-- the caller sends the lines one by one.
--
-- Counters are added as integers: in Lua (doubles, exact below 2^53) when the stored value and the
-- amount both have at most 15 characters, so one HMGET and one HSET cover a hash; by HINCRBY
-- otherwise (exact to 2^63, as before groups).
-- Every key it writes takes the batch record's remaining lifetime.
--
-- KEYS:
--   results      HASH    the batch's results, custom_id -> line
--   batch        HASH    the batch record
--   agg_hour     HASH    the aggregates of the lines' hour
--   agg_hours    ZSET    the aggregate hours, by start
--   events       STREAM  the batch's events
--   all_events   STREAM  every batch's end
--   batch_agg    HASH    the batch's own aggregates
--   open         ZSET    batches not finished yet
--   answers      SET     extra answers already counted in spent_pico
--   pool         HASH    the batch's pool (its tenant's hash): its spent_pico takes the same spend; '' for none
-- ARGV:
--   ttl          seconds: the lifetime of a batch record that has none
--   now          unix seconds: the batch's completed_at if these are its last results
--   hour         the lines' hour, YYYYMMDDHH
--   hour_start   that hour's start, unix seconds
--   agg_ttl      seconds the hourly aggregates are kept
--   spend        pico-dollars the providers billed for these answers (0: none)
--   answer       the answer's id (a hash of the line; one line only, else empty)
--   n_batch      how many counter pairs are for the batch record (outcomes included)
--   n_agg        how many counter pairs follow for the aggregates
--   items...     n_batch pairs (field, amount), n_agg pairs (aggregate field, amount), then
--                custom_id, line, outcome for each line
-- Returns: one code per line, 1 written (or this very line, sent again), 0 another answer was there,
-- -1 no batch; or an empty list: a group that must be sent line by line.
local results, batch, agg_hour, agg_hours = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local events, all_events, batch_agg, open, answers, pool = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local ttl, now, hour, hour_start, agg_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local spend, answer, n_batch, n_agg = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local items_from = 10
local agg_from = items_from + 2 * n_batch
local lines_from = agg_from + 2 * n_agg
local n = (#ARGV - lines_from + 1) / 3

-- what the providers billed, on the batch and on its pool (which has no lifetime: it outlives batches)
local function spent()
  redis.call('HINCRBY', batch, 'spent_pico', ARGV[6])
  if pool ~= '' then redis.call('HINCRBY', pool, 'spent_pico', ARGV[6]) end
end

local function codes(code)
  local out = {}
  for i = 1, n do out[i] = code end
  return out
end

-- add[field] = amount to `key`: summed in Lua where that is exact, by HINCRBY where it might not be
local function add(key, fields, amounts)
  local current = redis.call('HMGET', key, unpack(fields))
  local set = {}
  for i, field in ipairs(fields) do
    local have, amount = current[i] or '0', amounts[i]
    if #have <= 15 and #amount <= 15 and have:match('^%-?%d+$') and amount:match('^%-?%d+$') then
      set[#set + 1] = field
      set[#set + 1] = string.format('%.0f', tonumber(have) + tonumber(amount))
    else
      redis.call('HINCRBY', key, field, amount)
    end
  end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
end

local life = redis.call('PTTL', batch)
local h = redis.call('HMGET', batch, 'total', 'succeeded', 'errored', 'canceled', 'expired', 'status', 'id')
if life == -2 or not h[1] then return codes(-1) end
if life == -1 then life = tonumber(ttl) * 1000 end
local total = tonumber(h[1]) or 0
local done = (tonumber(h[2]) or 0) + (tonumber(h[3]) or 0) + (tonumber(h[4]) or 0) + (tonumber(h[5]) or 0)

local ids, pairs_ = {}, {}
for i = 1, n do
  local at = lines_from + 3 * (i - 1)
  ids[i] = ARGV[at]
  pairs_[2 * i - 1], pairs_[2 * i] = ARGV[at], ARGV[at + 1]
end
local stored = redis.call('HMGET', results, unpack(ids))
if n > 1 then
  local seen = {}
  for i = 1, n do
    if stored[i] or seen[ids[i]] then return {} end
    seen[ids[i]] = true
  end
  if done + n > total then return {} end
elseif stored[1] then
  if stored[1] == ARGV[lines_from + 1] then return {1} end
  if spend > 0 and redis.call('SADD', answers, answer) == 1 then
    spent()
    redis.call('PEXPIRE', answers, life)
  end
  return {0}
end

redis.call('HSET', results, unpack(pairs_))
if spend > 0 then spent() end
redis.call('PEXPIRE', results, life)
if done >= total then return {1} end  -- one line past the total (a group never gets here)

local fields, amounts = {}, {}
for i = 0, n_batch - 1 do
  fields[i + 1], amounts[i + 1] = ARGV[items_from + 2 * i], ARGV[items_from + 2 * i + 1]
end
if n_batch > 0 then add(batch, fields, amounts) end
local hour_fields, batch_fields, agg_amounts = {}, {}, {}
for i = 0, n_agg - 1 do
  local field = ARGV[agg_from + 2 * i]
  hour_fields[i + 1], batch_fields[i + 1] = field, hour .. '\31' .. field
  agg_amounts[i + 1] = ARGV[agg_from + 2 * i + 1]
end
if n_agg > 0 then
  add(agg_hour, hour_fields, agg_amounts)
  add(batch_agg, batch_fields, agg_amounts)
end
redis.call('PEXPIRE', batch_agg, life)
redis.call('EXPIRE', agg_hour, agg_ttl)
redis.call('ZADD', agg_hours, hour_start, hour)
redis.call('ZREMRANGEBYSCORE', agg_hours, '-inf', '(' .. (tonumber(hour_start) - tonumber(agg_ttl)))
for i = 1, n do
  redis.call('XADD', events, '*', 'type', 'request', 'custom_id', ids[i], 'outcome', ARGV[lines_from + 3 * i - 1])
end
redis.call('PEXPIRE', events, life)
if done + n >= total then
  local final = 'completed'
  if h[6] == 'cancelling' then final = 'cancelled' elseif h[6] == 'expiring' then final = 'expired' end
  redis.call('HSET', batch, 'status', final, 'completed_at', now)
  redis.call('ZREM', open, h[7])
  redis.call('XADD', events, '*', 'type', 'batch', 'batch', h[7], 'status', final)
  redis.call('XADD', all_events, 'MAXLEN', '~', 10000, '*', 'type', 'batch', 'batch', h[7], 'status', final)
end
return codes(1)
