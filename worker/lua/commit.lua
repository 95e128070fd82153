-- commit: store one request's final result once and count it once.
--
-- Writes the line; counts it in the batch record, the hourly and the per-batch aggregates; publishes
-- its event; closes the batch when its last result lands. Never re-creates a batch record that is
-- gone. The same line sent again (a client's resend after a timeout) changes nothing; another
-- answer for a request that already has one (a duplicate execution) only adds its spend, once per
-- answer. Every key it writes takes the batch record's remaining lifetime.
--
-- KEYS:
--   results      HASH    the batch's results, custom_id -> line
--   batch        HASH    the batch record
--   agg_hour     HASH    the aggregates of the line's hour
--   agg_hours    ZSET    the aggregate hours, by start
--   events       STREAM  the batch's events
--   all_events   STREAM  every batch's end
--   batch_agg    HASH    the batch's own aggregates
--   open         ZSET    batches not finished yet
--   answers      SET     extra answers already counted in spent_pico
-- ARGV:
--   custom_id    the request
--   line         its result line (JSON)
--   outcome      succeeded, errored, canceled or expired: the batch counter it adds to
--   ttl          seconds: the lifetime of a batch record that has none
--   now          unix seconds: the batch's completed_at if this is its last result
--   n_batch      how many of the counters are for the batch record (the rest are aggregate fields)
--   hour         the line's hour, YYYYMMDDHH
--   hour_start   that hour's start, unix seconds
--   agg_ttl      seconds the hourly aggregates are kept
--   spend        pico-dollars the provider billed for this answer (0: none)
--   answer       the answer's id (a hash of the line)
--   counters...  counter, amount pairs: n_batch for the batch record, then the aggregate fields
-- Returns: 1 written (or this very line, sent again), 0 another answer was there, -1 no batch.
local results, batch, agg_hour, agg_hours = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local events, all_events, batch_agg, open, answers = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local custom_id, line, outcome, ttl, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local n_batch, hour, hour_start, agg_ttl = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local spend, answer = tonumber(ARGV[10]), ARGV[11]
local counters_from = 12

local life = redis.call('PTTL', batch)
if life == -2 or redis.call('HEXISTS', batch, 'total') == 0 then return -1 end
if life == -1 then life = tonumber(ttl) * 1000 end
if redis.call('HSETNX', results, custom_id, line) == 0 then
  if redis.call('HGET', results, custom_id) == line then return 1 end
  if spend > 0 and redis.call('SADD', answers, answer) == 1 then
    redis.call('HINCRBY', batch, 'spent_pico', spend)
    redis.call('PEXPIRE', answers, life)
  end
  return 0
end
if spend > 0 then redis.call('HINCRBY', batch, 'spent_pico', spend) end
redis.call('PEXPIRE', results, life)
local h = redis.call('HMGET', batch, 'total', 'succeeded', 'errored', 'canceled', 'expired', 'status', 'id')
local total = tonumber(h[1]) or 0
local done = (tonumber(h[2]) or 0) + (tonumber(h[3]) or 0) + (tonumber(h[4]) or 0) + (tonumber(h[5]) or 0)
if done >= total then return 1 end
redis.call('HINCRBY', batch, outcome, 1)
local split = counters_from + 2 * n_batch
for i = counters_from, split - 1, 2 do redis.call('HINCRBY', batch, ARGV[i], ARGV[i + 1]) end
for i = split, #ARGV, 2 do
  redis.call('HINCRBY', agg_hour, ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', batch_agg, hour .. '\31' .. ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', batch_agg, life)
redis.call('EXPIRE', agg_hour, agg_ttl)
redis.call('ZADD', agg_hours, hour_start, hour)
redis.call('ZREMRANGEBYSCORE', agg_hours, '-inf', '(' .. (tonumber(hour_start) - tonumber(agg_ttl)))
redis.call('XADD', events, '*', 'type', 'request', 'custom_id', custom_id, 'outcome', outcome)
redis.call('PEXPIRE', events, life)
if done + 1 >= total then
  local final = 'completed'
  if h[6] == 'cancelling' then final = 'cancelled' elseif h[6] == 'expiring' then final = 'expired' end
  redis.call('HSET', batch, 'status', final, 'completed_at', now)
  redis.call('ZREM', open, h[7])
  redis.call('XADD', events, '*', 'type', 'batch', 'batch', h[7], 'status', final)
  redis.call('XADD', all_events, 'MAXLEN', '~', 10000, '*', 'type', 'batch', 'batch', h[7], 'status', final)
end
return 1
