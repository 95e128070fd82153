-- count_parked: count requests set aside (parked) on the batch record, or resumed (n < 0).
--
-- Only while the record exists: a batch that expired or was lost must not come back as a record of
-- counters alone, without a total or an expiry.
--
-- KEYS:
--   batch        HASH    the batch record
-- ARGV:
--   n            requests parked (negative: resumed)
--   resume_at    unix seconds they resume at
--   reason       why ('' when resuming)
-- Returns: the requests still parked, or -1 if the batch is gone.
local batch = KEYS[1]
local n, resume_at, reason = ARGV[1], ARGV[2], ARGV[3]

if redis.call('HEXISTS', batch, 'total') == 0 then return -1 end
local left = redis.call('HINCRBY', batch, 'parked', n)
if left <= 0 then redis.call('HDEL', batch, 'parked', 'parked_until', 'parked_reason')
elseif reason ~= '' then redis.call('HSET', batch, 'parked_until', resume_at, 'parked_reason', reason) end
return left
