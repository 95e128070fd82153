-- bucket_take: take one call's requests and tokens from a shared rate-limit bucket, or say how long to wait.
--
-- Three token buckets in one hash (l1 requests, l2 input tokens, l3 output tokens; t the last
-- update, ms), refilled continuously: each holds `burst` of a minute's limit and refills at
-- `(1 - burst)` of it, so no 60-second window passes the limit. A limit of 0 is no limit. A
-- cool-down in force wins. Time is Redis's (TIME).
--
-- KEYS:
--   bucket       HASH    the scope's buckets
--   cooldown     STRING  the scope's cool-down (its PTTL is what is left)
-- ARGV:
--   rpm          requests per minute (0: none)
--   itpm         input tokens per minute (0: none)
--   otpm         output tokens per minute (0: none)
--   need_r       requests this call takes (1)
--   need_i       input tokens it takes (an estimate)
--   need_o       output tokens it takes (an estimate)
--   burst        the fraction of a minute's limit a bucket holds
-- Returns: 0 taken, else milliseconds to wait (cool-down or refill).
local bucket, cooldown = KEYS[1], KEYS[2]
local rpm, itpm, otpm, need_r, need_i, need_o = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local burst = tonumber(ARGV[7])
local limits, wanted = {rpm, itpm, otpm}, {need_r, need_i, need_o}

local cool = redis.call('PTTL', cooldown)
if cool > 0 then return cool end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', bucket, 'l1', 'l2', 'l3', 't')
local last = tonumber(h[4]) or now
local wait, levels, needs = 0, {}, {}
for k = 1, 3 do
  local limit = tonumber(limits[k])
  if limit > 0 then
    local cap = math.max(limit * burst, 1)
    local rate = limit * (1 - burst) / 60000
    local level = tonumber(h[k]) or cap
    level = math.min(cap, level + (now - last) * rate)
    local need = math.min(tonumber(wanted[k]), cap)
    if level < need then wait = math.max(wait, math.ceil((need - level) / rate)) end
    levels[k], needs[k] = level, need
  end
end
if wait > 0 then return wait end
for k = 1, 3 do
  if levels[k] then redis.call('HSET', bucket, 'l' .. k, levels[k] - needs[k]) end
end
redis.call('HSET', bucket, 't', now)
redis.call('PEXPIRE', bucket, 120000)
return 0
