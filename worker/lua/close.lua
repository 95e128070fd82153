-- close: move an open batch to a closing status (cancelling, expiring); a finished one stays as it is.
--
-- KEYS:
--   batch        HASH    the batch record
-- ARGV:
--   closing      the status to move to
-- Returns: the status the batch now has (nil if the record is gone).
local batch = KEYS[1]
local closing = ARGV[1]

local st = redis.call('HGET', batch, 'status')
if st == 'in_progress' then redis.call('HSET', batch, 'status', closing) return closing end
return st
