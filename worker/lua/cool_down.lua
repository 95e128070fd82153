-- cool_down: lengthen (never shorten) a scope's shared cool-down, so every worker slows at once.
--
-- KEYS:
--   cooldown     STRING  the scope's cool-down
-- ARGV:
--   ms           its length from now, milliseconds
--   reason       why (kept as the value, for people reading Redis)
-- Returns: 0.
local cooldown = KEYS[1]
local ms, reason = ARGV[1], ARGV[2]

if redis.call('PTTL', cooldown) < tonumber(ms) then redis.call('SET', cooldown, reason, 'PX', ms) end
return 0
