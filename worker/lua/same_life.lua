-- same_life: give keys the remaining lifetime of the batch record, so a key written late (a retry's
-- jobs) does not outlive its batch.
--
-- KEYS:
--   batch        HASH    the batch record
--   others...    the keys to expire with it
-- ARGV: none
-- Returns: 1 done, 0 the record has no lifetime (gone, or none set).
local batch = KEYS[1]
local others_from = 2

local life = redis.call('PTTL', batch)
if life <= 0 then return 0 end
for i = others_from, #KEYS do redis.call('PEXPIRE', KEYS[i], life) end
return 1
