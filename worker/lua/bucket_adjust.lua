-- bucket_adjust: correct a bucket's token levels once a call's real usage is known.
--
-- The estimate taken before the call becomes the real count: extra tokens are taken (negative:
-- refunded, never past the bucket's capacity). Buckets with no limit are left alone.
--
-- KEYS:
--   bucket       HASH    the scope's buckets (l2 input tokens, l3 output tokens)
-- ARGV:
--   itpm         input tokens per minute (0: none)
--   otpm         output tokens per minute (0: none)
--   extra_i      input tokens used beyond the estimate (negative: refund)
--   extra_o      output tokens used beyond the estimate (negative: refund)
--   burst        the fraction of a minute's limit a bucket holds
-- Returns: 0.
local bucket = KEYS[1]
local itpm, otpm, extra_i, extra_o, burst = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local limits, extras = {itpm, otpm}, {extra_i, extra_o}

local h = redis.call('HMGET', bucket, 'l2', 'l3')
for k = 1, 2 do
  local limit = tonumber(limits[k])
  if limit > 0 and h[k] then
    local cap = math.max(limit * burst, 1)
    redis.call('HSET', bucket, 'l' .. (k + 1), math.min(cap, tonumber(h[k]) - tonumber(extras[k])))
  end
end
return 0
