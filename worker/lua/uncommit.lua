-- uncommit: take an errored result back so the request can run again (`otb retry`).
--
-- Only if the result is still the line the caller read, and the batch is neither closing nor closed
-- (a cancel wins over a retry). Takes its share of the aggregates back with it; a completed batch
-- opens again.
--
-- KEYS:
--   results      HASH    the batch's results, custom_id -> line
--   batch        HASH    the batch record
--   agg_hour     HASH    the aggregates of the line's hour
--   batch_agg    HASH    the batch's own aggregates
--   open         ZSET    batches not finished yet
-- ARGV:
--   custom_id    the request
--   line         the result line the caller read (JSON)
--   outcome      the batch counter the line was counted in
--   hour         the line's hour, YYYYMMDDHH
--   counters...  aggregate field, amount (negative) pairs
-- Returns: 1 taken back, 0 the line changed meanwhile or the batch is closing or closed.
local results, batch, agg_hour, batch_agg, open = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local custom_id, line, outcome, hour = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local counters_from = 5

local st = redis.call('HGET', batch, 'status')
if st ~= 'completed' and st ~= 'in_progress' then return 0 end
if redis.call('HGET', results, custom_id) ~= line then return 0 end
redis.call('HDEL', results, custom_id)
redis.call('HINCRBY', batch, outcome, -1)
if st == 'completed' then
  redis.call('HSET', batch, 'status', 'in_progress')
  redis.call('HDEL', batch, 'completed_at')
  local rec = redis.call('HMGET', batch, 'id', 'created_at')
  redis.call('ZADD', open, tonumber(rec[2]) or 0, rec[1])
end
for i = counters_from, #ARGV, 2 do
  redis.call('HINCRBY', agg_hour, ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', batch_agg, hour .. '\31' .. ARGV[i], ARGV[i + 1])
end
return 1
