-- take_due: take the members of a schedule that are due, holding each for a lease.
--
-- A member's score is when it is next due. Taking it moves its score to the end of the lease in the
-- same step, so two processes never take the same member at once, and one that dies holding it
-- leaves it due again when the lease ends (its taker settles it sooner: a new score, or removed).
--
-- KEYS:
--   schedule     ZSET    member -> unix s when it is next due
-- ARGV:
--   now          unix seconds
--   lease_until  unix seconds the taken members are held until
--   limit        the most members to take
-- Returns: {the earliest score left in the schedule after taking (nil if empty), taken members...}.
local schedule = KEYS[1]
local now, lease_until, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])

local taken = {}
if limit > 0 then
  taken = redis.call('ZRANGEBYSCORE', schedule, '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(taken) do
    redis.call('ZADD', schedule, lease_until, member)
  end
end
local first = redis.call('ZRANGE', schedule, 0, 0, 'WITHSCORES')
local out = {first[2] or false}
for _, member in ipairs(taken) do
  out[#out + 1] = member
end
return out
