-- reopen: open a closed batch again for `otb retry --expired`, before its first lines are taken back.
--
-- Only from the statuses the caller names (completed, expired, cancelled: never from cancelling or
-- expiring, where a close is still under way); a batch in progress keeps its status. With a new
-- window end, the batch's completion window starts again: expires_at moves and the janitor's deadline
-- index takes it. Queued on the same transaction as the first uncommits, so a batch is never left open
-- without a line to run.
--
-- KEYS:
--   batch        HASH    the batch record
--   open         ZSET    batches not finished yet
--   deadlines    ZSET    batch ids by the end of their completion window
-- ARGV:
--   expires_at   the window's new end (unix s, Redis clock), or "" to keep it
--   statuses...  the statuses it may reopen from
-- Returns: the status the batch had (nil if the record is gone).
local batch, open, deadlines = KEYS[1], KEYS[2], KEYS[3]
local expires_at = ARGV[1]
local statuses_from = 2

local rec = redis.call('HMGET', batch, 'status', 'id', 'created_at')
local st = rec[1]
if not st then return nil end
local allowed = st == 'in_progress'
for i = statuses_from, #ARGV do if ARGV[i] == st then allowed = true end end
if not allowed then return st end
if st ~= 'in_progress' then
  redis.call('HSET', batch, 'status', 'in_progress')
  redis.call('HDEL', batch, 'completed_at')
  redis.call('ZADD', open, tonumber(rec[3]) or 0, rec[2])
end
if expires_at ~= '' then
  redis.call('HSET', batch, 'expires_at', expires_at)
  redis.call('ZADD', deadlines, tonumber(expires_at), rec[2])
end
return st
